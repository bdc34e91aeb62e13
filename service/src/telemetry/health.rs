//! Liveness and readiness of a process, served beside `/metrics`:
//!
//! - `GET /healthz` (live): 200 whenever the process answers at all. The
//!   answer is written by a task on the process's tokio runtime, so it also
//!   says the runtime still schedules work. It never looks at the broker or
//!   the database: a probe that restarts a process on failure (a Kubernetes
//!   liveness probe) must not restart healthy processes during a broker
//!   outage that a restart cannot fix.
//! - `GET /readyz` (ready): 200 while every component that registered with
//!   [`Health::register`] says it is ready (the api: its broker link is up
//!   and it serves gRPC; the worker: it consumes every queue it should),
//!   else 503 with the reasons. For probes that only take a process out of
//!   rotation.
//!
//! Both answers carry the id of the serving process ([`PROCESS_ID_HEADER`])
//! and, in an api, the gRPC address it serves ([`GRPC_LISTEN_HEADER`]), so a
//! health check can tell its own process's endpoint from another's.

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock, Mutex, PoisonError},
};

/// Header naming the id of the process that answered.
pub const PROCESS_ID_HEADER: &str = "likes-process-id";
/// Header naming the gRPC address (`api.listen`) of the api that answered.
pub const GRPC_LISTEN_HEADER: &str = "likes-grpc-listen";

/// The readiness of a process: what its components say. One per process
/// ([`Health::process`]), as the endpoint that serves it is.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// By registration, so two components of one name (in-process tests
    /// start several apis) do not overwrite each other.
    components: BTreeMap<u64, Component>,
    grpc_listen: Option<String>,
}

#[derive(Debug)]
struct Component {
    name: &'static str,
    /// `None` when ready, else why not.
    not_ready: Option<String>,
}

static PROCESS: LazyLock<Arc<Health>> = LazyLock::new(Arc::default);

impl Health {
    /// The process's health, served by `serve_metrics`.
    pub fn process() -> Arc<Health> {
        Arc::clone(&PROCESS)
    }

    /// Adds a component to the readiness of the process, not ready for
    /// `reason` until it says otherwise; it leaves when the returned
    /// reporter is dropped.
    pub fn register(self: &Arc<Self>, name: &'static str, reason: &str) -> ReadinessReporter {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.components.insert(
            id,
            Component {
                name,
                not_ready: Some(reason.to_owned()),
            },
        );
        ReadinessReporter {
            health: Arc::clone(self),
            id,
        }
    }

    /// Records the gRPC address this process serves, for [`GRPC_LISTEN_HEADER`].
    pub fn set_grpc_listen(&self, listen: String) {
        self.lock().grpc_listen = Some(listen);
    }

    /// `Ok` when every component is ready, else the reasons of those that
    /// are not. Not ready while no component has registered (still
    /// starting, or stopped).
    pub fn readiness(&self) -> Result<(), String> {
        let state = self.lock();
        if state.components.is_empty() {
            return Err("starting: no component reports readiness yet".to_owned());
        }
        let reasons: Vec<String> = state
            .components
            .values()
            .filter_map(|c| Some(format!("{}: {}", c.name, c.not_ready.as_ref()?)))
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }

    pub(crate) fn grpc_listen(&self) -> Option<String> {
        self.lock().grpc_listen.clone()
    }

    fn set(&self, id: u64, not_ready: Option<String>) {
        if let Some(component) = self.lock().components.get_mut(&id) {
            component.not_ready = not_ready;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is replaced whole under the lock; a panic cannot leave
        // it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One component's say in its process's readiness (see [`Health::register`]).
#[derive(Debug)]
pub struct ReadinessReporter {
    health: Arc<Health>,
    id: u64,
}

impl ReadinessReporter {
    /// The component can do its job.
    pub fn ready(&self) {
        self.health.set(self.id, None);
    }

    /// The component cannot do its job, for `reason` (short, for a probe's
    /// log: "not connected to RabbitMQ").
    pub fn not_ready(&self, reason: &str) {
        self.health.set(self.id, Some(reason.to_owned()));
    }
}

impl Drop for ReadinessReporter {
    fn drop(&mut self) {
        self.health.lock().components.remove(&self.id);
    }
}

/// Which of the two endpoints a health check asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/healthz`.
    Live,
    /// `/readyz`.
    Ready,
}

impl Probe {
    pub fn path(self) -> &'static str {
        match self {
            Probe::Live => "/healthz",
            Probe::Ready => "/readyz",
        }
    }
}

/// What a health endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    /// HTTP 200.
    pub ok: bool,
    /// The answer's first line: `live`, `ready`, or why not.
    pub text: String,
    /// [`PROCESS_ID_HEADER`], if it was there and a number.
    pub process_id: Option<u32>,
    /// [`GRPC_LISTEN_HEADER`], if it was there.
    pub grpc_listen: Option<String>,
}

/// Asks `probe` of the endpoint at `addr` (host:port), giving up after
/// `timeout` (a hung process must fail its check, not hang it).
pub async fn probe(
    addr: &str,
    probe: Probe,
    timeout: std::time::Duration,
) -> Result<ProbeAnswer, super::MetricsError> {
    let answer = tokio::time::timeout(timeout, super::http_get(addr, probe.path()))
        .await
        .map_err(|_| super::MetricsError::Fetch {
            addr: addr.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer to GET {} within {timeout:?}", probe.path()),
            ),
        })??;
    Ok(ProbeAnswer {
        ok: answer.status == 200,
        text: answer.body.lines().next().unwrap_or_default().to_owned(),
        process_id: answer
            .header(PROCESS_ID_HEADER)
            .and_then(|pid| pid.parse().ok()),
        grpc_listen: answer.header(GRPC_LISTEN_HEADER).map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_component_is() {
        let health = Arc::new(Health::default());
        assert!(health.readiness().is_err(), "nothing registered yet");
        let api = health.register("api", "starting");
        assert_eq!(health.readiness(), Err("api: starting".to_owned()));
        api.ready();
        assert_eq!(health.readiness(), Ok(()));
        let worker = health.register("worker", "connecting");
        api.not_ready("not connected to RabbitMQ");
        assert_eq!(
            health.readiness(),
            Err("api: not connected to RabbitMQ; worker: connecting".to_owned())
        );
        drop(api);
        worker.ready();
        assert_eq!(health.readiness(), Ok(()));
        drop(worker);
        assert!(health.readiness().is_err(), "nothing left");
    }
}
