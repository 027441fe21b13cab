//! A three-broker Apache Kafka cluster of the test's own on 127.0.0.1, for
//! fault tests: each broker is also a KRaft controller (a quorum of three),
//! topics want three replicas and two in sync (`min.insync.replicas=2`), and
//! any broker can be killed with SIGKILL and started again on its storage.
//! Uses the jars and the formatted storage template `scripts/services.sh up`
//! caches; each broker's storage is a copy of the template with its own node
//! id and directory id.

use std::process::Child;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::ClientConfig;

use crate::{copy_dir, free_local_addr, kafka_home, log4j2_properties, spawn_kafka, TEST_JVM};

/// One broker of the cluster.
struct Member {
    id: i32,
    addr: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Three Apache Kafka brokers (each a controller too), stopped when dropped.
pub struct TestCluster {
    members: Vec<Member>,
    bootstrap: String,
}

impl TestCluster {
    /// Starts three brokers and waits until all three are registered.
    pub fn start() -> Self {
        let template = kafka_home().join("storage-template");
        assert!(
            template.join("meta.properties").exists(),
            "no Apache Kafka storage template at {}: run scripts/services.sh up",
            template.display()
        );
        let ids = [1, 2, 3];
        let addrs: Vec<String> = ids.iter().map(|_| free_local_addr()).collect();
        let controllers: Vec<String> = ids.iter().map(|_| free_local_addr()).collect();
        let voters = ids
            .iter()
            .zip(&controllers)
            .map(|(id, c)| format!("{id}@{c}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let dir = tempfile::Builder::new()
                .prefix(&format!("backflow-kafka{id}-"))
                .tempdir()
                .expect("tempdir");
            let data = dir.path().join("data");
            copy_dir(&template, &data).expect("copy the storage template");
            let meta = std::fs::read_to_string(data.join("meta.properties")).expect("meta");
            let meta: String = meta
                .lines()
                .map(|l| {
                    if l.starts_with("node.id=") {
                        format!("node.id={id}")
                    } else if l.starts_with("directory.id=") {
                        format!("directory.id={}", directory_id())
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(data.join("meta.properties"), meta + "\n").expect("meta");
            std::fs::write(
                dir.path().join("server.properties"),
                properties(*id, &addrs[i], &controllers[i], &voters, &data),
            )
            .expect("write server.properties");
            std::fs::write(
                dir.path().join("log4j2.properties"),
                log4j2_properties(&dir.path().join("broker.log")),
            )
            .expect("write log4j2.properties");
            members.push(Member {
                id: *id,
                addr: addrs[i].clone(),
                dir,
                child: None,
            });
        }
        for m in &mut members {
            m.child = Some(spawn_kafka(m.dir.path(), TEST_JVM));
        }
        let cluster = Self {
            bootstrap: addrs.join(","),
            members,
        };
        cluster.wait_brokers(3, Duration::from_secs(90));
        cluster
    }

    /// `host:port,host:port,host:port` for clients.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Kills broker `id` with SIGKILL.
    pub fn kill(&mut self, id: i32) {
        let m = self.member(id);
        if let Some(mut child) = m.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts broker `id` again on its storage and waits until the cluster
    /// has all three brokers again.
    pub fn restart(&mut self, id: i32) {
        let m = self.member(id);
        assert!(m.child.is_none(), "broker {id} is running");
        m.child = Some(spawn_kafka(m.dir.path(), TEST_JVM));
        self.wait_brokers(3, Duration::from_secs(90));
    }

    /// The broker's log (warnings and up), for failure messages.
    pub fn log(&self, id: i32) -> String {
        let m = self.members.iter().find(|m| m.id == id).expect("member");
        std::fs::read_to_string(m.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// The leader and the replicas of a partition, as the cluster's
    /// metadata says (asked of a live broker).
    pub fn placement(&self, topic: &str, partition: i32) -> (i32, Vec<i32>) {
        let alive: Vec<&str> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.addr.as_str())
            .collect();
        let consumer = client(&alive.join(","));
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                if let Some(p) = md
                    .topics()
                    .first()
                    .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
                {
                    if p.leader() >= 0 {
                        return (p.leader(), p.replicas().to_vec());
                    }
                }
            }
            assert!(Instant::now() < until, "no leader for {topic}[{partition}]");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until a broker other than `old` leads the partition (the
    /// controller notices a killed broker after `broker.session.timeout.ms`);
    /// returns the new leader.
    pub fn new_leader(&self, topic: &str, partition: i32, old: i32) -> i32 {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let (leader, _) = self.placement(topic, partition);
            if leader != old {
                return leader;
            }
            assert!(
                Instant::now() < until,
                "{topic}[{partition}] still led by broker {old} a minute after it was killed"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn member(&mut self, id: i32) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.id == id)
            .unwrap_or_else(|| panic!("no broker {id}"))
    }

    fn wait_brokers(&self, n: usize, deadline: Duration) {
        let until = Instant::now() + deadline;
        let consumer = client(&self.bootstrap);
        loop {
            if let Ok(md) = consumer.fetch_metadata(None, Duration::from_secs(5)) {
                if md.brokers().len() >= n {
                    return;
                }
            }
            assert!(
                Instant::now() < until,
                "the cluster did not have {n} brokers within {deadline:?}:\n{}",
                self.members
                    .iter()
                    .map(|m| format!("broker {}:\n{}", m.id, self.log(m.id)))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn client(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "backflow-test-metadata")
        .set("log_level", "3")
        .create()
        .expect("metadata client")
}

/// A random KRaft directory id (a UUID as Kafka writes it: 16 bytes,
/// URL-safe base64 without padding).
fn directory_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes: Vec<u8> = (0..16).map(|_| fastrand::u8(..)).collect();
    let mut bits = 0u32;
    let mut held = 0;
    let mut out = String::new();
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        held += 8;
        while held >= 6 {
            held -= 6;
            out.push(ALPHABET[((bits >> held) & 63) as usize] as char);
        }
    }
    if held > 0 {
        out.push(ALPHABET[((bits << (6 - held)) & 63) as usize] as char);
    }
    out
}

fn properties(
    id: i32,
    addr: &str,
    controller: &str,
    voters: &str,
    data: &std::path::Path,
) -> String {
    format!(
        "process.roles=broker,controller\n\
         node.id={id}\n\
         controller.quorum.voters={voters}\n\
         listeners=PLAINTEXT://{addr},CONTROLLER://{controller}\n\
         advertised.listeners=PLAINTEXT://{addr}\n\
         controller.listener.names=CONTROLLER\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         inter.broker.listener.name=PLAINTEXT\n\
         log.dirs={}\n\
         num.partitions=1\n\
         default.replication.factor=3\n\
         min.insync.replicas=2\n\
         unclean.leader.election.enable=false\n\
         offsets.topic.replication.factor=3\n\
         offsets.topic.num.partitions=4\n\
         transaction.state.log.replication.factor=3\n\
         transaction.state.log.min.isr=2\n\
         transaction.state.log.num.partitions=4\n\
         share.coordinator.state.topic.replication.factor=3\n\
         share.coordinator.state.topic.min.isr=2\n\
         group.initial.rebalance.delay.ms=0\n\
         auto.create.topics.enable=false\n\
         replica.lag.time.max.ms=10000\n\
         broker.session.timeout.ms=6000\n\
         broker.heartbeat.interval.ms=1000\n\
         log.cleaner.backoff.ms=1000\n",
        data.display()
    )
}
