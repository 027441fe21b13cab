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
{{- regexReplaceAll "(?m)[ \t]+$" (toToml $config | trim) "" }}
{{ end }}

{{/* The container port: the port of config.http.listen. */}}
{{- define "backflow.httpPort" -}}
{{- $listen := (.Values.config.http | default dict).listen | default "127.0.0.1:8480" | toString }}
{{- splitList ":" $listen | last }}
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
{{- $shutdownMs := ($c.runtime | default dict).shutdown_timeout_ms | default 10000 }}
{{- if ge (float64 $shutdownMs) (mulf (float64 .Values.terminationGracePeriodSeconds) 1000.0) }}
{{- fail (printf "config.runtime.shutdown_timeout_ms (%v) must stay below terminationGracePeriodSeconds (%v s), or Kubernetes kills backflow before its graceful shutdown ends" $shutdownMs .Values.terminationGracePeriodSeconds) }}
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
