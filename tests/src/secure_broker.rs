//! An Apache Kafka broker as a government network runs it: clients reach
//! it only over SASL_SSL (SCRAM-SHA-512 over TLS), its broker and controller
//! listeners take only mutual TLS, and its authorizer refuses whatever no
//! ACL allows (`allow.everyone.if.no.acl.found=false`). Certificates (a CA
//! of the test's own, the broker's certificate for 127.0.0.1) are made with
//! the `openssl` command; SCRAM users are written into the storage when it
//! is formatted, as an operator bootstraps a cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context as _};

/// The principal the broker's own certificate gives it (its listeners
/// between broker and controller), a super user.
const BROKER_PRINCIPAL: &str = "User:CN=broker";

/// A SCRAM user of the broker.
#[derive(Debug, Clone)]
pub struct ScramUser {
    pub name: String,
    pub password: String,
    /// Whether the authorizer lets it do everything (`super.users`).
    pub super_user: bool,
}

impl ScramUser {
    /// A user with a random password.
    pub fn new(name: &str, super_user: bool) -> Self {
        Self {
            name: name.to_owned(),
            password: format!("pw-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            super_user,
        }
    }
}

/// A broker that takes SASL_SSL clients only, with the authorizer on;
/// stopped when dropped.
pub struct SecureBroker {
    child: Child,
    bootstrap: String,
    dir: tempfile::TempDir,
}

impl SecureBroker {
    /// Makes the certificates, formats the storage with `users`' SCRAM
    /// credentials, starts the broker and waits until it listens.
    pub fn start(users: &[ScramUser]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("backflow-kafka-secure-")
            .tempdir()
            .expect("tempdir");
        make_certificates(dir.path()).expect("make the test's certificates with openssl");
        let bootstrap = crate::free_local_addr();
        let internal = crate::free_local_addr();
        let controller = crate::free_local_addr();
        let data = dir.path().join("data");
        let props = properties(dir.path(), &bootstrap, &internal, &controller, &data, users);
        std::fs::write(dir.path().join("server.properties"), props).expect("server.properties");
        std::fs::write(
            dir.path().join("log4j2.properties"),
            crate::log4j2_properties(&dir.path().join("broker.log")),
        )
        .expect("log4j2.properties");
        format_storage(dir.path(), users).expect("format the broker's storage");
        let child = crate::spawn_kafka(dir.path(), crate::TEST_JVM);
        let broker = Self {
            child,
            bootstrap,
            dir,
        };
        broker.wait_listening();
        broker
    }

    fn wait_listening(&self) {
        crate::wait_for_broker(&self.bootstrap, &self.dir.path().join("broker.log"));
    }

    /// `host:port` of the SASL_SSL listener.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The CA certificate (PEM) clients verify the broker with.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for 127.0.0.1 signed by [`SecureBroker::ca_file`]'s CA
    /// and its key (PEM files), e.g. for a node's HTTPS.
    pub fn server_certificate(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("broker.crt"),
            self.dir.path().join("broker.key"),
        )
    }

    /// librdkafka properties of a client logging in as `user`.
    pub fn client_properties(&self, user: &str, password: &str) -> Vec<(String, String)> {
        [
            ("bootstrap.servers", self.bootstrap.as_str()),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", user),
            ("sasl.password", password),
            ("ssl.ca.location", &self.ca_file().display().to_string()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Runs one of Apache Kafka's own command-line tools (its main class,
    /// e.g. `org.apache.kafka.tools.AclCommand`) as `user`, as an operator
    /// would by hand; returns its standard output, or its error.
    pub fn kafka_tool(
        &self,
        class: &str,
        user: &str,
        password: &str,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let client = self.dir.path().join(format!("client-{user}.properties"));
        std::fs::write(
            &client,
            format!(
                "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n\
                 sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{user}\" password=\"{password}\";\n\
                 ssl.truststore.type=PEM\nssl.truststore.location={}\n",
                self.ca_file().display()
            ),
        )?;
        let out = Command::new("java")
            .args([
                "-Xms32m",
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
            ])
            .arg("-cp")
            .arg(format!("{}/*", crate::kafka_home().join("libs").display()))
            .arg(class)
            .args(["--bootstrap-server", &self.bootstrap, "--command-config"])
            .arg(&client)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run java (on PATH) for an Apache Kafka tool")?;
        if !out.status.success() {
            bail!(
                "{class} {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("run openssl (on PATH)")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Makes, in `dir`, `ca.pem` (a CA of the test's own), `broker.key` (a
/// PKCS#8 key), `broker.crt` (its certificate for 127.0.0.1 and localhost,
/// for server and client use, signed by the CA) and `broker.pem` (key and
/// certificate in one file, as Kafka's PEM key store wants).
pub fn make_certificates(dir: &Path) -> anyhow::Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=backflow test CA",
    ]);
    openssl(dir, &ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "broker.key",
        "-out",
        "broker.csr",
        "-subj",
        "/CN=broker",
    ]);
    openssl(dir, &csr)?;
    std::fs::write(
        dir.join("broker.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "broker.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "broker.crt",
            "-days",
            "2",
            "-extfile",
            "broker.ext",
        ],
    )?;
    let key = std::fs::read_to_string(dir.join("broker.key"))?;
    let cert = std::fs::read_to_string(dir.join("broker.crt"))?;
    std::fs::write(dir.join("broker.pem"), format!("{key}{cert}"))?;
    Ok(())
}

fn properties(
    dir: &Path,
    bootstrap: &str,
    internal: &str,
    controller: &str,
    data: &Path,
    users: &[ScramUser],
) -> String {
    let supers: Vec<String> = std::iter::once(BROKER_PRINCIPAL.to_owned())
        .chain(
            users
                .iter()
                .filter(|u| u.super_user)
                .map(|u| format!("User:{}", u.name)),
        )
        .collect();
    format!(
        "process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.voters=1@{controller}\n\
         listeners=SASL_SSL://{bootstrap},INTERNAL://{internal},CONTROLLER://{controller}\n\
         advertised.listeners=SASL_SSL://{bootstrap},INTERNAL://{internal}\n\
         controller.listener.names=CONTROLLER\n\
         listener.security.protocol.map=SASL_SSL:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL\n\
         inter.broker.listener.name=INTERNAL\n\
         sasl.enabled.mechanisms=SCRAM-SHA-512\n\
         listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
         ssl.keystore.type=PEM\n\
         ssl.keystore.location={keystore}\n\
         ssl.truststore.type=PEM\n\
         ssl.truststore.location={ca}\n\
         listener.name.internal.ssl.client.auth=required\n\
         listener.name.controller.ssl.client.auth=required\n\
         authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n\
         allow.everyone.if.no.acl.found=false\n\
         super.users={supers}\n\
         log.dirs={data}\n\
         num.partitions=1\n\
         offsets.topic.replication.factor=1\n\
         offsets.topic.num.partitions=4\n\
         transaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\n\
         transaction.state.log.num.partitions=4\n\
         share.coordinator.state.topic.replication.factor=1\n\
         share.coordinator.state.topic.min.isr=1\n\
         group.initial.rebalance.delay.ms=0\n\
         auto.create.topics.enable=false\n",
        keystore = dir.join("broker.pem").display(),
        ca = dir.join("ca.pem").display(),
        supers = supers.join(";"),
        data = data.display(),
    )
}

/// Formats the storage with the users' SCRAM-SHA-512 credentials.
fn format_storage(dir: &Path, users: &[ScramUser]) -> anyhow::Result<()> {
    let libs = format!("{}/*", crate::kafka_home().join("libs").display());
    let java = |args: &[String]| -> anyhow::Result<String> {
        let out = Command::new("java")
            .args([
                "-Xms32m",
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
            ])
            .arg("-cp")
            .arg(&libs)
            .arg("kafka.tools.StorageTool")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("run java (on PATH) for Kafka's storage tool")?;
        if !out.status.success() {
            bail!(
                "kafka storage tool {:?}: {}{}",
                args.first(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let cluster = java(&["random-uuid".to_owned()])?;
    let mut args: Vec<String> = ["format", "-t", &cluster, "-c", "server.properties"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for u in users {
        args.push("--add-scram".to_owned());
        args.push(format!(
            "SCRAM-SHA-512=[name={},password={}]",
            u.name, u.password
        ));
    }
    java(&args)?;
    Ok(())
}
