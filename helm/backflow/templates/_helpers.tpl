{{/* Names and labels. */}}

{{- define "backflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "backflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "backflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "backflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "backflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "backflow.labels" -}}
helm.sh/chart: {{ include "backflow.chart" . }}
{{ include "backflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.role }}
app.kubernetes.io/part-of: backflow
{{- with (.Values.config.node | default dict).code }}
backflow/node-code: {{ . | quote }}
{{- end }}
{{- end }}

{{- define "backflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "backflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "backflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/* The Secret the container's credentials come from ("" when none). */}}
{{- define "backflow.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if .Values.secrets.env }}
{{- include "backflow.fullname" . }}
{{- end }}
{{- end }}

{{/* Where the configuration file is mounted. */}}
{{- define "backflow.configDir" -}}/etc/backflow{{- end }}
{{- define "backflow.configFile" -}}{{ include "backflow.configDir" . }}/backflow.toml{{- end }}

{{/*
backflow.intify: YAML and JSON values reach templates as float64, which
toToml writes as 5432.0; backflow reads ports and sizes as integers. Turns
every integral float of a map (recursively, and in lists) into an int64, in
place: call it on a deepCopy.
*/}}
{{- define "backflow.intify" -}}
{{- $m := . }}
{{- range $k, $v := $m }}
{{- if and (kindIs "float64" $v) (eq $v (floor $v)) }}
{{- $_ := set $m $k (int64 $v) }}
{{- else if kindIs "map" $v }}
{{- include "backflow.intify" $v }}
{{- else if kindIs "slice" $v }}
{{- $items := list }}
{{- range $v }}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}
{{- $items = append $items (int64 .) }}
{{- else }}
{{- if kindIs "map" . }}{{ include "backflow.intify" . }}{{ end }}
{{- $items = append $items . }}
{{- end }}
{{- end }}
{{- $_ := set $m $k $items }}
{{- end }}
{{- end }}
{{- end }}

{{/*
backflow.configToml: the configuration file, exactly as the ConfigMap holds
it (one trailing newline, no trailing blanks, so that the YAML block scalar
gives back these bytes and checksum/config is the sha256 of the file).
*/}}
{{- define "backflow.configToml" -}}
{{- include "backflow.validate" . }}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- include "backflow.intify" $config }}
{{- with include "backflow.auditKeyEnv" . }}
{{- $audit := $config.audit | default dict }}
{{- $_ := set $audit "signing_key_env" . }}
{{- $_ := set $config "audit" $audit }}
{{- end }}
{{- regexReplaceAll "(?m)[ \t]+$" (toToml $config | trim) "" }}
{{ end }}

{{/* The container port: the port of config.http.listen. */}}
{{- define "backflow.httpPort" -}}
{{- $listen := (.Values.config.http | default dict).listen | default "127.0.0.1:8480" | toString }}
{{- splitList ":" $listen | last }}
{{- end }}

{{/* The metrics container port: the port of config.http.metrics_listen ("" when unset). */}}
{{- define "backflow.metricsPort" -}}
{{- with (.Values.config.http | default dict).metrics_listen }}
{{- splitList ":" (toString .) | last }}
{{- end }}
{{- end }}

{{/*
backflow.auditKeyConfigured: "true" when the values set the node's audit
signing key themselves (config.audit.signing_key_env or signing_key_file,
or their BACKFLOW_AUDIT__* variables in env).
*/}}
{{- define "backflow.auditKeyConfigured" -}}
{{- $a := (.Values.config | default dict).audit | default dict }}
{{- $set := or $a.signing_key_env $a.signing_key_file }}
{{- range .Values.env | default list }}
{{- if has (toString .name) (list "BACKFLOW_AUDIT__SIGNING_KEY_ENV" "BACKFLOW_AUDIT__SIGNING_KEY_FILE") }}{{ $set = true }}{{ end }}
{{- end }}
{{- if $set }}true{{ end }}
{{- end }}

{{/*
backflow.auditKeyEnv: the variable the chart sets config.audit.signing_key_env
to ("" when none): for role node whose values do not set the key themselves,
auditSigningKey.secretKey when secrets.env or env holds it, or
secrets.existingSecret is set (which must then hold it).
*/}}
{{- define "backflow.auditKeyEnv" -}}
{{- $var := (.Values.auditSigningKey | default dict).secretKey | default "" | toString }}
{{- if and (eq .Values.role "node") $var (not (include "backflow.auditKeyConfigured" .)) }}
{{- $provided := or .Values.secrets.existingSecret (not (kindIs "invalid" (index (.Values.secrets.env | default dict) $var))) }}
{{- range .Values.env | default list }}
{{- if eq (toString .name) $var }}{{ $provided = true }}{{ end }}
{{- end }}
{{- if $provided }}{{ $var }}{{ end }}
{{- end }}
{{- end }}

{{/* The subcommand and its arguments for the role. */}}
{{- define "backflow.args" -}}
{{- $args := list "--config" (include "backflow.configFile" .) }}
{{- if eq .Values.role "node" }}
{{- $args = append $args "serve" }}
{{- else if eq .Values.role "source" }}
{{- $args = append $args "source" }}
{{- range .Values.sourceFeeds }}
{{- $args = concat $args (list "--feed" .) }}
{{- end }}
{{- else if eq .Values.role "subscriber" }}
{{- $args = append $args "subscribe" }}
{{- end }}
{{- $args = concat $args (.Values.extraArgs | default list) }}
{{- toYaml $args }}
{{- end }}

{{/*
backflow.secretRefs: "key=VARIABLE" lines for every environment variable
the configuration takes a credential from.
*/}}
{{- define "backflow.secretRefs" -}}
{{- $c := .Values.config | default dict }}
{{- range $prop, $var := ($c.kafka | default dict).properties_env | default dict }}
kafka.properties_env.{{ $prop }}={{ $var }}
{{- end }}
{{- range $i, $f := $c.feeds | default list }}
{{- with $f.password_env }}
feeds[{{ $i }}].password_env={{ . }}
{{- end }}
{{- end }}
{{- range $i, $s := $c.subscriptions | default list }}
{{- with ($s.sink | default dict).password_env }}
subscriptions[{{ $i }}].sink.password_env={{ . }}
{{- end }}
{{- range $prop, $var := ($s.upstream | default dict).properties_env | default dict }}
subscriptions[{{ $i }}].upstream.properties_env.{{ $prop }}={{ $var }}
{{- end }}
{{- with ($s.upstream | default dict).registry_token_env }}
subscriptions[{{ $i }}].upstream.registry_token_env={{ . }}
{{- end }}
{{- end }}
{{- range $i, $s := $c.shares | default list }}
{{- with $s.secret_env }}
shares[{{ $i }}].secret_env={{ . }}
{{- end }}
{{- end }}
{{- with ($c.audit | default dict).signing_key_env }}
audit.signing_key_env={{ . }}
{{- end }}
{{- with include "backflow.auditKeyEnv" . }}
audit.signing_key_env={{ . }}
{{- end }}
{{- end }}

{{/* Refuses values backflow cannot run with, naming the value to change. */}}
{{- define "backflow.validate" -}}
{{- $roles := list "node" "source" "subscriber" }}
{{- if not (has .Values.role $roles) }}
{{- fail (printf "role %q: must be one of node (backflow serve), source (backflow source), subscriber (backflow subscribe)" (toString .Values.role)) }}
{{- end }}
{{- $c := .Values.config | default dict }}
{{- $listen := ($c.http | default dict).listen | default "127.0.0.1:8480" | toString }}
{{- if or (hasPrefix "127." $listen) (hasPrefix "localhost:" $listen) (hasPrefix "[::1]" $listen) }}
{{- fail (printf "config.http.listen %q: a pod must listen on every interface for its probes, Service and ServiceMonitor; use \"0.0.0.0:8480\"" $listen) }}
{{- end }}
{{- if not (regexMatch "^[0-9]+$" (include "backflow.httpPort" .)) }}
{{- fail (printf "config.http.listen %q: expected HOST:PORT, e.g. \"0.0.0.0:8480\"" $listen) }}
{{- end }}
{{- /* /metrics without a token: on http.metrics_listen only. */}}
{{- with ($c.http | default dict).metrics_listen }}
{{- $ml := toString . }}
{{- if or (hasPrefix "127." $ml) (hasPrefix "localhost:" $ml) (hasPrefix "[::1]" $ml) }}
{{- fail (printf "config.http.metrics_listen %q: Prometheus scrapes the pod's metrics port from outside the pod; listen on every interface, e.g. \"0.0.0.0:9480\"" $ml) }}
{{- end }}
{{- if not (regexMatch "^[0-9]+$" (include "backflow.metricsPort" $)) }}
{{- fail (printf "config.http.metrics_listen %q: expected HOST:PORT, e.g. \"0.0.0.0:9480\"" $ml) }}
{{- end }}
{{- if eq (include "backflow.metricsPort" $) (include "backflow.httpPort" $) }}
{{- fail (printf "config.http.metrics_listen %q and config.http.listen %q use the same port %s: give the metrics listener a port of its own, e.g. \"0.0.0.0:9480\"" $ml $listen (include "backflow.httpPort" $)) }}
{{- end }}
{{- else }}
{{- if .Values.serviceMonitor.enabled }}
{{- fail "serviceMonitor.enabled scrapes /metrics on config.http.metrics_listen, which is not set (on config.http.listen /metrics answers 401 without an admin token): set config.http.metrics_listen, e.g. \"0.0.0.0:9480\"" }}
{{- end }}
{{- end }}
{{- $shutdownMs := ($c.runtime | default dict).shutdown_timeout_ms | default 10000 }}
{{- if ge (float64 $shutdownMs) (mulf (float64 .Values.terminationGracePeriodSeconds) 1000.0) }}
{{- fail (printf "config.runtime.shutdown_timeout_ms (%v) must stay below terminationGracePeriodSeconds (%v s), or Kubernetes kills backflow before its graceful shutdown ends" $shutdownMs .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- $replicas := int .Values.replicas }}
{{- if lt $replicas 1 }}
{{- fail (printf "replicas %v: at least 1" .Values.replicas) }}
{{- end }}
{{- if and (gt $replicas 1) (ne .Values.role "node") }}
{{- fail (printf "replicas %d with role %s: only role node runs as several processes (feeds and cascading subscriptions hold leases, the distributor splits its partitions); a %s writes alone, keep replicas 1" $replicas .Values.role .Values.role) }}
{{- end }}
{{- if and (gt $replicas 1) (($c.kafka | default dict).replica) }}
{{- fail "config.kafka.replica names one process, and replicas > 1 runs several: leave it out (each pod uses its own name)" }}
{{- end }}
{{- if and (gt $replicas 1) (not ($c.kafka | default dict).brokers) }}
{{- fail "replicas > 1 needs a Kafka cluster the pods share: set config.kafka.brokers (the embedded broker lives inside one process)" }}
{{- end }}
{{- $feeds := $c.feeds | default list }}
{{- $subs := $c.subscriptions | default list }}
{{- if eq .Values.role "source" }}
{{- if not $feeds }}
{{- fail "role source runs config.feeds, and there are none: add [[feeds]] to config.feeds" }}
{{- end }}
{{- if not ($c.kafka | default dict).brokers }}
{{- fail "role source publishes to the node's Kafka: set config.kafka.brokers" }}
{{- end }}
{{- $names := list }}
{{- range $feeds }}{{ $names = append $names (toString .name) }}{{ end }}
{{- range .Values.sourceFeeds }}
{{- if not (has (toString .) $names) }}
{{- fail (printf "sourceFeeds: no feed named %q in config.feeds (feeds: %s)" (toString .) (join ", " $names)) }}
{{- end }}
{{- end }}
{{- else if .Values.sourceFeeds }}
{{- fail (printf "sourceFeeds is for role source; this release's role is %s" .Values.role) }}
{{- end }}
{{- if eq .Values.role "subscriber" }}
{{- if not $subs }}
{{- fail "role subscriber runs config.subscriptions, and there are none: add [[subscriptions]] to config.subscriptions" }}
{{- end }}
{{- range $subs }}
{{- if eq (toString (.sink | default dict).type) "kafka" }}
{{- fail (printf "config.subscriptions %s: a sink of type kafka re-publishes into this node's own bus; run it in a release with role node (backflow serve), not subscriber" (toString .name)) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Credentials never go into the ConfigMap. */}}
{{- $secretish := "(?i)(password|secret|jaas|token|key\\.pem)" }}
{{- range $k, $v := ($c.kafka | default dict).properties | default dict }}
{{- if regexMatch $secretish $k }}
{{- fail (printf "config.kafka.properties.%s looks like a credential and would be written into the ConfigMap: put it in secrets.env and name the variable in kafka.properties_env" $k) }}
{{- end }}
{{- end }}
{{- range $i, $s := $subs }}
{{- range $k, $v := ($s.upstream | default dict).properties | default dict }}
{{- if regexMatch $secretish $k }}
{{- fail (printf "config.subscriptions[%d].upstream.properties.%s looks like a credential and would be written into the ConfigMap: put it in secrets.env and name the variable in upstream.properties_env" $i $k) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* A node on a Kafka cluster refuses to start without its audit signing key. */}}
{{- $keyVar := (.Values.auditSigningKey | default dict).secretKey | default "BACKFLOW_AUDIT_KEY" | toString }}
{{- if and (eq .Values.role "node") ($c.kafka | default dict).brokers (not (include "backflow.auditKeyConfigured" .)) (not (include "backflow.auditKeyEnv" .)) }}
{{- fail (printf "role node on a Kafka cluster (config.kafka.brokers) signs its audit trail with its own Ed25519 key and refuses to start without it, and no key is given: make one with `backflow audit keygen --out audit.key` (it prints the public key for owners and auditors) and give it with --set-file secrets.env.%s=audit.key (the Secret key auditSigningKey.secretKey names), or keep it under %s in secrets.existingSecret" $keyVar $keyVar) }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- with ($c.audit | default dict).signing_key_env | default (include "backflow.auditKeyEnv" .) }}
{{- $key := index ($.Values.secrets.env | default dict) (toString .) }}
{{- if and (not (kindIs "invalid" $key)) (not (regexMatch "^\\s*[0-9a-fA-F]{64}\\s*$" (toString $key))) }}
{{- fail (printf "secrets.env.%s is not an audit signing key: expected the Ed25519 secret key's 32-byte seed as 64 hex digits, as `backflow audit keygen --out FILE` writes it; give that file with --set-file secrets.env.%s=FILE" (toString .) (toString .)) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* A credential as a plain value in env would be written into the Deployment. */}}
{{- $plain := dict }}
{{- range $i, $e := .Values.env | default list }}
{{- if hasKey $e "value" }}{{ $_ := set $plain (toString $e.name) (toString $i) }}{{ end }}
{{- end }}
{{- range splitList "\n" (include "backflow.secretRefs" . | trim) }}
{{- if . }}
{{- $ref := splitn "=" 2 . }}
{{- if hasKey $plain $ref._1 }}
{{- fail (printf "env[%s] gives %s, the credential config.%s names, as a plain value, which would be written into the Deployment: put it in secrets.env (or secrets.existingSecret), or take it from a Secret with valueFrom.secretKeyRef" (get $plain $ref._1) $ref._1 $ref._0) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- $provided := list }}
{{- range $name, $value := .Values.secrets.env | default dict }}
{{- if not (kindIs "invalid" $value) }}{{ $provided = append $provided $name }}{{ end }}
{{- end }}
{{- range .Values.env | default list }}{{ $provided = append $provided (toString .name) }}{{ end }}
{{- range splitList "\n" (include "backflow.secretRefs" . | trim) }}
{{- if . }}
{{- $ref := splitn "=" 2 . }}
{{- if not (has $ref._1 $provided) }}
{{- fail (printf "config.%s names the environment variable %s, which neither secrets.env nor env provides: add %s to secrets.env (or set secrets.existingSecret to a Secret holding it)" $ref._0 $ref._1 $ref._1) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
