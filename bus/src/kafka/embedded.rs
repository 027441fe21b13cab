//! The embedded broker: librdkafka's in-process mock cluster.
//!
//! It speaks the Kafka protocol on a local port, so producers and consumer
//! groups work unchanged, but it keeps data in memory only, loses it when the
//! process ends, does not compact, and has no admin API (topics are created
//! through [`EmbeddedAdmin`]). It is the zero-setup default for trying
//! backflow, never for production.

use std::sync::mpsc;
use std::thread;

use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaError;

enum Request {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: mpsc::Sender<Result<bool, String>>,
    },
    Stop,
}

/// A running embedded broker; stopped when dropped.
pub struct EmbeddedBroker {
    bootstrap: String,
    requests: mpsc::Sender<Request>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Creates topics on an embedded broker (it has no CreateTopics API).
#[derive(Clone)]
pub struct EmbeddedAdmin {
    requests: mpsc::Sender<Request>,
}

impl EmbeddedBroker {
    /// Starts a one-broker in-memory cluster on a free local port.
    pub fn start() -> Result<Self, KafkaError> {
        // The mock cluster handle is not Send; it lives on its own thread,
        // which owns it and serves requests until asked to stop.
        let (ready_tx, ready_rx) = mpsc::channel();
        let (requests, rx) = mpsc::channel::<Request>();
        let thread = thread::Builder::new()
            .name("embedded-kafka".to_owned())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(Request::CreateTopic {
                    name,
                    partitions,
                    reply,
                }) = rx.recv()
                {
                    let outcome = match cluster.create_topic(&name, partitions, 1) {
                        Ok(()) => Ok(true),
                        Err(e)
                            if e.rdkafka_error_code()
                                == Some(RDKafkaErrorCode::TopicAlreadyExists) =>
                        {
                            Ok(false)
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = reply.send(outcome);
                }
            })
            .map_err(|e| KafkaError::Embedded(e.to_string()))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| KafkaError::Embedded("broker thread ended before starting".into()))?
            .map_err(KafkaError::Embedded)?;
        Ok(Self {
            bootstrap,
            requests,
            thread: Some(thread),
        })
    }

    /// The `host:port` list clients connect to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// A handle that creates topics on this broker.
    pub fn admin(&self) -> EmbeddedAdmin {
        EmbeddedAdmin {
            requests: self.requests.clone(),
        }
    }
}

impl EmbeddedAdmin {
    /// Creates a topic; `Ok(false)` when it already existed.
    pub(crate) fn create_topic(&self, name: &str, partitions: i32) -> Result<bool, KafkaError> {
        let (reply, answer) = mpsc::channel();
        let stopped = || KafkaError::Embedded("the embedded broker has stopped".into());
        self.requests
            .send(Request::CreateTopic {
                name: name.to_owned(),
                partitions,
                reply,
            })
            .map_err(|_| stopped())?;
        answer
            .recv()
            .map_err(|_| stopped())?
            .map_err(|reason| KafkaError::Admin {
                topic: name.to_owned(),
                reason,
            })
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
