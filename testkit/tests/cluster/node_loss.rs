//! Losing a broker node under a steady load of a few thousand likes a
//! second: the api and the worker list all three nodes in `amqp.url`, the
//! event queue is a quorum queue, and the node they use (which also hosts
//! the queue's leader, as it was declared through it) goes away. Each test
//! checks that both move to another node within a few seconds, that the
//! api's health goes NOT_SERVING and back to SERVING, and that every Like
//! answered OK is stored exactly once and none is dead-lettered; and
//! prints what callers saw (the README's failure table quotes it).

use likes_common::config::{QueueType, SecretUrl};
use likes_testkit::{
    RunningApi, TestEnv,
    cluster::{CTL_POLL_INTERVAL, Cluster},
    eventually, eventually_every,
    load::{Steady, SteadyOutcome, check_exactly, like_steadily},
};
use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// How long the api may take to be SERVING again on another node.
const MOVE_WITHIN: Duration = Duration::from_secs(10);
/// How long the worker may take to commit a batch again. Longer: it can
/// only write what the api gets enqueued, and on RabbitMQ 3.10 the node the
/// api moved to can refuse a channel's publishes for many seconds after the
/// leader's node was lost, until the api replaces the refused link (see the
/// README's failure table).
const WRITING_WITHIN: Duration = Duration::from_secs(30);
/// Failed answers less than this apart belong to one unavailable window.
const WINDOW_GAP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `rabbitmqctl stop_app` on the node in use, later `start_app`.
    StopApp,
    /// SIGKILL of the node's Erlang VM, later booted again.
    Kill,
    /// Every node stopped (`rabbitmqctl stop`) and booted again, one after
    /// the other, each once no quorum queue depends on it alone.
    RollingRestart,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Self::StopApp => "stop_app",
            Self::Kill => "SIGKILL",
            Self::RollingRestart => "rolling restart",
        }
    }
}

pub async fn survive(cluster: &mut Cluster, fault: Fault) -> anyhow::Result<()> {
    cluster.heal().await?;
    let mut env = TestEnv::new();
    env.settings.amqp.url = SecretUrl::new(cluster.urls());
    env.settings.amqp.queue_type = QueueType::Quorum;
    let api = env.spawn_api().await?;
    let worker = env.spawn_worker().await?;
    let queue = env.settings.amqp.queue.clone();

    let (api_node, worker_node) = placement(cluster, &queue).await?;
    anyhow::ensure!(
        api_node == worker_node,
        "api on {}, worker on {}: both should use the first node listed",
        short(cluster, api_node),
        short(cluster, worker_node)
    );
    let home = api_node;
    let leader = cluster.queue_leader(&queue).await?;
    anyhow::ensure!(
        leader == Some(home),
        "the queue was declared through {} but its leader is on {leader:?}",
        short(cluster, home)
    );

    let health = HealthLog::watch(api.addr).await?;
    let writes = WriteLog::follow(Arc::clone(&worker.stats));
    let stop = CancellationToken::new();
    let load = tokio::spawn(like_steadily(
        clients(&api).await?,
        env.id().to_owned(),
        Steady::default(),
        stop.clone(),
    ));
    eventually(
        Duration::from_secs(30),
        "likes to flow through the worker",
        || {
            let stats = Arc::clone(&worker.stats);
            async move { Ok((stats.events() > 1_000).then_some(())) }
        },
    )
    .await?;

    let mut log = String::new();
    let fault_at = Instant::now();
    let mut expected_outages = 0;
    match fault {
        Fault::StopApp | Fault::Kill => {
            if fault == Fault::StopApp {
                cluster.stop_app(home).await?;
            } else {
                cluster.kill(home).await?;
            }
            let gone = Instant::now();
            expected_outages += 1;
            let _ = write!(
                log,
                "{} took {:.1} s; ",
                fault.label(),
                (gone - fault_at).as_secs_f64()
            );
            let back =
                await_recovery(cluster, &queue, home, (fault_at, gone), &health, &writes).await?;
            let _ = write!(log, "{back}; ");
            let leader = eventually_every(
                CTL_POLL_INTERVAL,
                Duration::from_secs(30),
                "a new queue leader",
                || async { Ok(cluster.queue_leader(&queue).await?.filter(|&n| n != home)) },
            )
            .await?;
            let _ = write!(
                log,
                "queue leader {} -> {}; ",
                short(cluster, home),
                short(cluster, leader)
            );
            // The load goes on against the two nodes left for a while, and
            // keeps going while the lost node comes back.
            tokio::time::sleep(Duration::from_secs(3)).await;
            if fault == Fault::StopApp {
                cluster.start_app(home).await?;
            } else {
                cluster.boot(home).await?;
            }
        }
        Fault::RollingRestart => {
            let order: Vec<usize> = std::iter::once(home)
                .chain((0..cluster.len()).filter(|&n| n != home))
                .collect();
            for node in order {
                let waited = Instant::now();
                cluster
                    .await_quorum_safe(node, Duration::from_secs(60))
                    .await?;
                let (api_node, _) = placement(cluster, &queue).await?;
                let _ = write!(
                    log,
                    "{}: quorum safe after {:.1} s",
                    short(cluster, node),
                    waited.elapsed().as_secs_f64()
                );
                let at = Instant::now();
                cluster.stop(node).await?;
                let gone = Instant::now();
                let _ = write!(log, ", stop took {:.1} s", (gone - at).as_secs_f64());
                if api_node == node {
                    expected_outages += 1;
                    let back =
                        await_recovery(cluster, &queue, node, (at, gone), &health, &writes).await?;
                    let _ = write!(log, ", {back}");
                }
                cluster.boot(node).await?;
                let _ = write!(log, ", back after {:.1} s; ", at.elapsed().as_secs_f64());
            }
        }
    }
    // A little load on the healed cluster, then stop sending.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let outcome = load.await??;

    let outages = health.outages(fault_at);
    eprintln!("{}: {}{}", fault.label(), log, describe(&outcome, &outages));
    anyhow::ensure!(
        outages.len() >= expected_outages,
        "health went NOT_SERVING {} times; expected at least {expected_outages}",
        outages.len()
    );
    anyhow::ensure!(
        health.last() == Some(ServingStatus::Serving),
        "health ends {:?}",
        health.last()
    );
    env.wait_for_stored_pairs(outcome.acknowledged.len(), Duration::from_secs(120))
        .await?;
    let mut db = env.db().await?;
    check_exactly(&mut db, &outcome.acknowledged).await?;
    assert_eq!(worker.stats.dead_lettered(), 0, "nothing dead-lettered");
    assert_eq!(
        env.queue_depth(&env.settings.amqp.dead_letter_queue)
            .await?,
        0,
        "the dead-letter queue is empty"
    );
    Ok(())
}

/// Four client connections to the api, as several callers would have.
async fn clients(
    api: &RunningApi,
) -> anyhow::Result<
    Vec<likes_proto::pb::like_service_client::LikeServiceClient<tonic::transport::Channel>>,
> {
    let mut clients = vec![api.client.clone()];
    for _ in 0..3 {
        clients.push(api.new_client().await?);
    }
    Ok(clients)
}

/// The nodes the api and the worker of `queue` are connected to, once both are.
async fn placement(cluster: &Cluster, queue: &str) -> anyhow::Result<(usize, usize)> {
    eventually_every(
        CTL_POLL_INTERVAL,
        Duration::from_secs(30),
        "the api and the worker to be connected",
        || async {
            let (api, worker, _) = connected(cluster, queue).await?;
            Ok(api.zip(worker))
        },
    )
    .await
}

/// The nodes the api and the worker of `queue` are connected to, and
/// every node any of their connections is on.
async fn connected(
    cluster: &Cluster,
    queue: &str,
) -> anyhow::Result<(Option<usize>, Option<usize>, Vec<usize>)> {
    let connections = cluster.connections().await?;
    let api = format!("likes-api {queue}");
    let worker = format!("likes-worker {queue}");
    let on = |name: &str| {
        connections
            .iter()
            .find(|c| c.is_named(name))
            .map(|c| c.node)
    };
    let nodes = connections
        .iter()
        .filter(|c| c.is_named(&api) || c.is_named(&worker))
        .map(|c| c.node)
        .collect();
    Ok((on(&api), on(&worker), nodes))
}

/// After the node the api and the worker used went away (the command
/// ran from `fault.0` to `fault.1`): waits until the api's health went
/// NOT_SERVING and came back within [`MOVE_WITHIN`] of `fault.1`, and the
/// worker committed a batch again within [`WRITING_WITHIN`]; then checks
/// with the cluster that
/// neither is connected to `lost`. Says how long each took, counted from
/// the moment the api lost its connection.
async fn await_recovery(
    cluster: &Cluster,
    queue: &str,
    lost: usize,
    fault: (Instant, Instant),
    health: &HealthLog,
    writes: &WriteLog,
) -> anyhow::Result<String> {
    let (began, gone) = fault;
    let serving = eventually(
        MOVE_WITHIN.saturating_sub(gone.elapsed()),
        "the api to go NOT_SERVING and be SERVING again",
        || async {
            let outage = health.outages(began).first().copied();
            Ok(outage.and_then(|(down, up)| Some((down, up?))))
        },
    )
    .await;
    let recovered = match serving {
        Ok((down, up)) => eventually(
            WRITING_WITHIN.saturating_sub(gone.elapsed()),
            "the worker to write again",
            || async { Ok(writes.first_after(gone)) },
        )
        .await
        .map(|written| (down, up, written)),
        Err(error) => Err(error),
    };
    let (down, up, written) = match recovered {
        Ok(recovered) => recovered,
        Err(error) => {
            // What the broker saw, to tell a client that did not come back
            // from a queue that did not.
            let queues = cluster
                .rabbitmqctl(&[
                    "-q",
                    "list_queues",
                    "name",
                    "leader",
                    "online",
                    "consumers",
                    "messages_ready",
                    "messages_unacknowledged",
                ])
                .await;
            let connections = connected(cluster, queue).await;
            let outages = health.outages(began).len();
            let written = writes.first_after(gone).is_some();
            return Err(error.context(format!(
                "health outages {outages}, worker wrote again: {written}; \
                 api and worker on {connections:?}; queues {queues:?}"
            )));
        }
    };
    let (api_node, worker_node) = eventually_every(
        CTL_POLL_INTERVAL,
        Duration::from_secs(30),
        "the api and the worker to be connected to another node",
        || async {
            let (api, worker, nodes) = connected(cluster, queue).await?;
            Ok(api.zip(worker).filter(|_| !nodes.contains(&lost)))
        },
    )
    .await?;
    Ok(format!(
        "api on {} and SERVING {:.2} s after it lost {}, worker on {} and writing within {:.2} s",
        short(cluster, api_node),
        (up - down).as_secs_f64(),
        short(cluster, lost),
        short(cluster, worker_node),
        written.saturating_duration_since(down).as_secs_f64()
    ))
}

/// `rc1` for `rc1-1a2b3c4d@localhost`.
fn short(cluster: &Cluster, node: usize) -> &str {
    let name = cluster.name(node);
    name.split('-').next().unwrap_or(name)
}

/// The caller's view, for the test output and the README.
fn describe(outcome: &SteadyOutcome, outages: &[(Instant, Option<Instant>)]) -> String {
    let windows = outcome.windows(WINDOW_GAP);
    let spans: Vec<String> = windows
        .iter()
        .map(|w| format!("{:.2} s", (w.end - w.start).as_secs_f64()))
        .collect();
    let not_serving: Vec<String> = outages
        .iter()
        .map(|(start, end)| match end {
            Some(end) => format!("{:.2} s", (*end - *start).as_secs_f64()),
            None => format!("{:.2} s and still", start.elapsed().as_secs_f64()),
        })
        .collect();
    // "the request was not stored (message broker refused the message); …"
    let reasons: Vec<String> = outcome
        .reasons
        .iter()
        .map(|(message, n)| {
            let reason = message
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .map_or(message.as_str(), |(reason, _)| reason);
            format!("{n} {reason}")
        })
        .collect();
    format!(
        "{} likes OK in {:.1} s ({:.0}/s); {} UNAVAILABLE ({}) and {} DEADLINE_EXCEEDED answers, \
         {} likes retried, in {} window(s) of [{}]; longest wait for an OK {:.2} s; \
         health NOT_SERVING for [{}]",
        outcome.acknowledged.len(),
        outcome.ran_for.as_secs_f64(),
        outcome.per_second(),
        outcome.unavailable,
        reasons.join(", "),
        outcome.deadline_exceeded,
        outcome.delayed,
        windows.len(),
        spans.join(", "),
        outcome.longest_wait.as_secs_f64(),
        not_serving.join(", ")
    )
}

/// The api's health for LikeService, as a Watch stream reports its changes.
struct HealthLog {
    changes: Arc<Mutex<Vec<(Instant, ServingStatus)>>>,
    task: JoinHandle<()>,
}

impl HealthLog {
    async fn watch(addr: SocketAddr) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let mut stream = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: "likes.v1.LikeService".into(),
            })
            .await?
            .into_inner();
        let changes = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let changes = Arc::clone(&changes);
            async move {
                while let Ok(Some(reply)) = stream.message().await {
                    changes
                        .lock()
                        .expect("never poisoned")
                        .push((Instant::now(), reply.status()));
                }
            }
        });
        Ok(Self { changes, task })
    }

    fn last(&self) -> Option<ServingStatus> {
        self.changes
            .lock()
            .expect("never poisoned")
            .last()
            .map(|c| c.1)
    }

    /// NOT_SERVING periods that began after `since`: start, end if over.
    fn outages(&self, since: Instant) -> Vec<(Instant, Option<Instant>)> {
        let changes = self.changes.lock().expect("never poisoned");
        let mut outages: Vec<(Instant, Option<Instant>)> = Vec::new();
        for &(at, status) in changes.iter().filter(|(at, _)| *at >= since) {
            let open = outages.last().is_some_and(|o| o.1.is_none());
            match (status, open) {
                (ServingStatus::Serving, true) => {
                    if let Some(last) = outages.last_mut() {
                        last.1 = Some(at);
                    }
                }
                (ServingStatus::Serving, false) => {}
                (_, false) => outages.push((at, None)),
                (_, true) => {}
            }
        }
        outages
    }
}

impl Drop for HealthLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// When the worker committed batches, sampled every 10 ms.
struct WriteLog {
    times: Arc<Mutex<Vec<Instant>>>,
    task: JoinHandle<()>,
}

impl WriteLog {
    fn follow(stats: Arc<likes_worker::stats::WorkerStats>) -> Self {
        let times = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let times = Arc::clone(&times);
            async move {
                let mut seen = stats.batches();
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let batches = stats.batches();
                    if batches > seen {
                        seen = batches;
                        times.lock().expect("never poisoned").push(Instant::now());
                    }
                }
            }
        });
        Self { times, task }
    }

    /// The first time a batch was committed after `since`.
    fn first_after(&self, since: Instant) -> Option<Instant> {
        let times = self.times.lock().expect("never poisoned");
        times.iter().copied().find(|&t| t > since)
    }
}

impl Drop for WriteLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}
