//! A pod's status from what the agent observed of its containers: phase, conditions and
//! container statuses, the way kubelet computes them. Pure, so it is tested by tables.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `ContainerCannotRun`, …
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    pub container_id: Option<String>,
}

/// A container's current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not running: `ContainerCreating`, `PodInitializing`, `CrashLoopBackOff`, `ErrImagePull`, …
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Terminated),
}

/// What the agent knows of one container of the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub name: String,
    pub image: String,
    /// The resolved image (`name@sha256:…`), once known.
    pub image_id: String,
    /// `containerd://<id>` of the current container, once made.
    pub container_id: Option<String>,
    pub restart_count: i32,
    pub state: State,
    pub last: Option<Terminated>,
    /// Running and passing its readiness probe (if any).
    pub ready: bool,
    /// Running and past its startup probe (if any).
    pub started: bool,
}

impl Observed {
    /// A container not yet started, waiting for `reason`.
    pub fn waiting(name: &str, image: &str, reason: &str) -> Observed {
        Observed {
            name: name.to_string(),
            image: image.to_string(),
            image_id: String::new(),
            container_id: None,
            restart_count: 0,
            state: State::Waiting {
                reason: reason.to_string(),
                message: None,
            },
            last: None,
            ready: false,
            started: false,
        }
    }

    fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
    }

    /// Stopped for good or between restarts: terminated, or waiting after an earlier run.
    fn stopped(&self) -> bool {
        match &self.state {
            State::Terminated(_) => true,
            State::Waiting { .. } => self.last.is_some(),
            State::Running { .. } => false,
        }
    }
}

/// Everything the status is computed from.
pub struct Inputs<'a> {
    pub pod: &'a Pod,
    pub init: &'a [Observed],
    pub app: &'a [Observed],
    pub pod_ips: &'a [String],
    pub host_ip: Option<&'a str>,
    /// When the agent first started working on the pod.
    pub start_time: Option<Timestamp>,
    /// Set when the pod failed as a whole (`DeadlineExceeded`, `Evicted`, …): (reason, message).
    pub failed: Option<(&'a str, &'a str)>,
    pub now: Timestamp,
}

/// The pod's phase from its containers (kubelet's `getPhase`).
pub fn phase(restart_policy: &str, init: &[Observed], app: &[Observed]) -> &'static str {
    let init_failed = init.iter().any(|c| {
        matches!(&c.state, State::Terminated(t) if t.exit_code != 0)
            || (matches!(c.state, State::Waiting { .. })
                && c.last.as_ref().is_some_and(|l| l.exit_code != 0))
    });
    if init_failed && restart_policy == "Never" {
        return "Failed";
    }
    let initialized = init.iter().all(Observed::succeeded);
    if !initialized {
        return "Pending";
    }
    let running = app
        .iter()
        .filter(|c| matches!(c.state, State::Running { .. }))
        .count();
    let stopped = app.iter().filter(|c| c.stopped()).count();
    let succeeded = app.iter().filter(|c| c.succeeded()).count();
    let waiting = app.len() - running - stopped;
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped == 0 {
        return "Pending";
    }
    match restart_policy {
        "Always" => "Running",
        _ if succeeded == stopped => "Succeeded",
        "OnFailure" => "Running",
        _ => "Failed",
    }
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn terminated_state(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: t.started_at.map(time),
        finished_at: Some(time(t.finished_at)),
        container_id: t.container_id.clone(),
        signal: None,
    }
}

fn container_status(c: &Observed) -> ContainerStatus {
    let state = match &c.state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..ContainerState::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(terminated_state(t)),
            ..ContainerState::default()
        },
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: c.container_id.clone(),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: Some(c.last.as_ref().map_or_else(ContainerState::default, |t| {
            ContainerState {
                terminated: Some(terminated_state(t)),
                ..ContainerState::default()
            }
        })),
        ..ContainerStatus::default()
    }
}

/// The full status. Condition transition times are kept from `pod.status` when the condition's
/// status did not change, so a re-computed status equal to the last one is byte-for-byte equal
/// and needs no write.
pub fn pod_status(inputs: &Inputs<'_>) -> PodStatus {
    let pod = inputs.pod;
    let old = pod.status.clone().unwrap_or_default();
    let restart_policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let phase = match inputs.failed {
        Some(_) => "Failed",
        None => phase(restart_policy, inputs.init, inputs.app),
    };
    let initialized = inputs.init.iter().all(Observed::succeeded);
    let containers_ready = !inputs.app.is_empty() && inputs.app.iter().all(|c| c.ready);
    // A pod that finished is not ready, whatever its containers were.
    let terminal = phase == "Succeeded" || phase == "Failed";
    let old_conditions: BTreeMap<String, PodCondition> = old
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_.clone(), c))
        .collect();
    let condition = |type_: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        let since = old_conditions
            .get(type_)
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| time(inputs.now));
        PodCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: (!ok).then(|| reason.map(str::to_string)).flatten(),
            last_transition_time: Some(since),
            ..PodCondition::default()
        }
    };
    let mut conditions = Vec::new();
    if let Some(scheduled) = old_conditions.get("PodScheduled") {
        conditions.push(scheduled.clone());
    }
    conditions.push(condition(
        "Initialized",
        initialized,
        Some("ContainersNotInitialized"),
    ));
    let ready_reason = if terminal {
        Some("PodCompleted")
    } else {
        Some("ContainersNotReady")
    };
    conditions.push(condition(
        "ContainersReady",
        containers_ready && !terminal,
        ready_reason,
    ));
    conditions.push(condition(
        "Ready",
        containers_ready && !terminal,
        ready_reason,
    ));
    // Conditions other agents own (DisruptionTarget, readiness gates) stay as they are.
    for (type_, c) in &old_conditions {
        if !matches!(
            type_.as_str(),
            "PodScheduled" | "Initialized" | "ContainersReady" | "Ready"
        ) {
            conditions.push(c.clone());
        }
    }
    let (reason, message) = match inputs.failed {
        Some((reason, message)) => (Some(reason.to_string()), Some(message.to_string())),
        None => (None, None),
    };
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: inputs.host_ip.map(str::to_string),
        host_ips: inputs
            .host_ip
            .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip: ip.to_string() }]),
        pod_ip: inputs.pod_ips.first().cloned(),
        pod_ips: (!inputs.pod_ips.is_empty()).then(|| {
            inputs
                .pod_ips
                .iter()
                .map(|ip| PodIP { ip: ip.clone() })
                .collect()
        }),
        start_time: old.start_time.clone().or(inputs.start_time.map(time)),
        init_container_statuses: (!inputs.init.is_empty())
            .then(|| inputs.init.iter().map(container_status).collect()),
        container_statuses: Some(inputs.app.iter().map(container_status).collect()),
        qos_class: old.qos_class.clone(),
        reason,
        message,
        nominated_node_name: old.nominated_node_name.clone(),
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn running(name: &str) -> Observed {
        Observed {
            state: State::Running { started_at: ts(1) },
            ready: true,
            started: true,
            ..Observed::waiting(name, "img", "")
        }
    }

    fn exited(name: &str, code: i32) -> Observed {
        Observed {
            state: State::Terminated(Terminated {
                exit_code: code,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: None,
                started_at: Some(ts(1)),
                finished_at: ts(2),
                container_id: None,
            }),
            ..Observed::waiting(name, "img", "")
        }
    }

    fn backing_off(name: &str, code: i32) -> Observed {
        let last = match exited(name, code).state {
            State::Terminated(t) => t,
            _ => unreachable!(),
        };
        Observed {
            last: Some(last),
            restart_count: 1,
            ..Observed::waiting(name, "img", "CrashLoopBackOff")
        }
    }

    #[test]
    fn phase_follows_kubelet() {
        let creating = Observed::waiting("a", "img", "ContainerCreating");
        let cases: Vec<(&str, Vec<Observed>, Vec<Observed>, &str)> = vec![
            ("Always", vec![], vec![creating.clone()], "Pending"),
            ("Always", vec![], vec![running("a")], "Running"),
            (
                "Always",
                vec![],
                vec![running("a"), creating.clone()],
                "Pending",
            ),
            ("Always", vec![], vec![backing_off("a", 1)], "Running"),
            ("Always", vec![], vec![exited("a", 0)], "Running"),
            ("OnFailure", vec![], vec![exited("a", 0)], "Succeeded"),
            ("OnFailure", vec![], vec![exited("a", 1)], "Running"),
            (
                "Never",
                vec![],
                vec![exited("a", 0), exited("b", 0)],
                "Succeeded",
            ),
            (
                "Never",
                vec![],
                vec![exited("a", 0), exited("b", 2)],
                "Failed",
            ),
            (
                "Never",
                vec![],
                vec![running("a"), exited("b", 2)],
                "Running",
            ),
            // Init containers gate the app containers.
            (
                "Always",
                vec![creating.clone()],
                vec![Observed::waiting("a", "i", "PodInitializing")],
                "Pending",
            ),
            (
                "Never",
                vec![exited("i", 1)],
                vec![Observed::waiting("a", "i", "PodInitializing")],
                "Failed",
            ),
            (
                "OnFailure",
                vec![backing_off("i", 1)],
                vec![Observed::waiting("a", "i", "PodInitializing")],
                "Pending",
            ),
            (
                "Always",
                vec![exited("i", 0)],
                vec![running("a")],
                "Running",
            ),
        ];
        for (policy, init, app, want) in cases {
            assert_eq!(
                phase(policy, &init, &app),
                want,
                "{policy} {init:?} {app:?}"
            );
        }
    }

    #[test]
    fn conditions_keep_their_transition_times_and_statuses_carry_states() {
        let pod = Pod::default();
        let app = [running("web")];
        let first = pod_status(&Inputs {
            pod: &pod,
            init: &[],
            app: &app,
            pod_ips: &["10.244.0.5".to_string()],
            host_ip: Some("192.168.1.2"),
            start_time: Some(ts(0)),
            failed: None,
            now: ts(10),
        });
        assert_eq!(first.phase.as_deref(), Some("Running"));
        assert_eq!(first.pod_ip.as_deref(), Some("10.244.0.5"));
        let ready = first
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        // Recomputed later with nothing changed: equal, so no write.
        let pod = Pod {
            status: Some(first.clone()),
            ..Pod::default()
        };
        let again = pod_status(&Inputs {
            pod: &pod,
            init: &[],
            app: &app,
            pod_ips: &["10.244.0.5".to_string()],
            host_ip: Some("192.168.1.2"),
            start_time: Some(ts(5)),
            failed: None,
            now: ts(99),
        });
        assert_eq!(again, first);
        // Not ready any more: the transition time moves.
        let mut unready = running("web");
        unready.ready = false;
        let changed = pod_status(&Inputs {
            pod: &pod,
            init: &[],
            app: &[unready],
            pod_ips: &[],
            host_ip: None,
            start_time: None,
            failed: None,
            now: ts(100),
        });
        let ready = changed
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(ready.last_transition_time, Some(Time(ts(100))));
        let status = &changed.container_statuses.as_ref().unwrap()[0];
        assert!(status.state.as_ref().unwrap().running.is_some());
    }

    #[test]
    fn a_crash_looping_container_shows_waiting_with_its_last_exit() {
        let pod = Pod::default();
        let status = pod_status(&Inputs {
            pod: &pod,
            init: &[],
            app: &[backing_off("app", 2)],
            pod_ips: &[],
            host_ip: None,
            start_time: None,
            failed: None,
            now: ts(3),
        });
        let c = &status.container_statuses.unwrap()[0];
        assert_eq!(
            c.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        assert_eq!(
            c.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            2
        );
        assert_eq!(c.restart_count, 1);
    }
}
