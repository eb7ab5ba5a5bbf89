//! Liveness, readiness and startup probes: their timing (every field of `Probe`) and the
//! network kinds (`httpGet`, `tcpSocket`). `exec` probes run through containerd in the worker.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

/// One probe's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    Failure(String),
}

/// The thresholds and schedule of one probe of one container.
#[derive(Clone, Debug)]
pub struct State {
    pub next_at: Instant,
    successes: i32,
    failures: i32,
    /// The last verdict after thresholds: `Some(true)` passing, `Some(false)` failing.
    verdict: Option<bool>,
}

fn seconds(v: Option<i32>, default: i32, min: i32) -> i32 {
    v.unwrap_or(default).max(min)
}

/// The probe's timeout (`timeoutSeconds`, default 1 s).
pub fn timeout(probe: &Probe) -> Duration {
    Duration::from_secs(seconds(probe.timeout_seconds, 1, 1) as u64)
}

fn period(probe: &Probe) -> Duration {
    Duration::from_secs(seconds(probe.period_seconds, 10, 1) as u64)
}

impl State {
    /// A probe of a container that started at `started`: first due after `initialDelaySeconds`.
    pub fn new(probe: &Probe, started: Instant) -> State {
        State {
            next_at: started
                + Duration::from_secs(seconds(probe.initial_delay_seconds, 0, 0) as u64),
            successes: 0,
            failures: 0,
            verdict: None,
        }
    }

    /// Records a result and schedules the next run. Returns the verdict when it changes (or is
    /// first reached): `successThreshold` successes in a row pass, `failureThreshold` failures
    /// in a row fail.
    pub fn record(&mut self, probe: &Probe, result: &ProbeResult) -> Option<bool> {
        self.next_at = Instant::now() + period(probe);
        let success_threshold = seconds(probe.success_threshold, 1, 1);
        let failure_threshold = seconds(probe.failure_threshold, 3, 1);
        let verdict = match result {
            ProbeResult::Success => {
                self.failures = 0;
                self.successes += 1;
                (self.successes >= success_threshold).then_some(true)
            }
            ProbeResult::Failure(_) => {
                self.successes = 0;
                self.failures += 1;
                (self.failures >= failure_threshold).then_some(false)
            }
        };
        match verdict {
            Some(v) if self.verdict != Some(v) || !v => {
                self.verdict = Some(v);
                if !v {
                    // A failing liveness probe restarts the container; count afresh after.
                    self.failures = 0;
                }
                Some(v)
            }
            _ => None,
        }
    }
}

/// A named or numbered port of the container.
fn port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Runs an `httpGet` or `tcpSocket` probe against the pod's IP.
pub async fn network_probe(probe: &Probe, pod_ip: IpAddr, container: &Container) -> ProbeResult {
    let limit = timeout(probe);
    if let Some(tcp) = &probe.tcp_socket {
        let Some(p) = port(&tcp.port, container) else {
            return ProbeResult::Failure(format!("unknown port {:?}", tcp.port));
        };
        let addr = SocketAddr::new(pod_ip, p);
        return match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => ProbeResult::Success,
            Ok(Err(e)) => ProbeResult::Failure(format!("dial tcp {addr}: {e}")),
            Err(_) => ProbeResult::Failure(format!("dial tcp {addr}: timeout")),
        };
    }
    if let Some(http) = &probe.http_get {
        let Some(p) = port(&http.port, container) else {
            return ProbeResult::Failure(format!("unknown port {:?}", http.port));
        };
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return ProbeResult::Failure("HTTPS probes are not supported yet".into());
        }
        let addr = SocketAddr::new(pod_ip, p);
        let path = http
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        let host = http.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{p}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for h in http.http_headers.iter().flatten() {
            request.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        request.push_str("\r\n");
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut head = [0u8; 64];
            let mut n = 0;
            while n < head.len() {
                let read = stream.read(&mut head[n..]).await?;
                if read == 0 {
                    break;
                }
                n += read;
                if head[..n].contains(&b'\n') {
                    break;
                }
            }
            Ok::<String, std::io::Error>(String::from_utf8_lossy(&head[..n]).into_owned())
        };
        return match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(head)) => {
                let code: Option<u16> = head.split_whitespace().nth(1).and_then(|c| c.parse().ok());
                match code {
                    Some(c) if (200..400).contains(&c) => ProbeResult::Success,
                    Some(c) => {
                        ProbeResult::Failure(format!("HTTP probe failed with statuscode: {c}"))
                    }
                    None => ProbeResult::Failure(format!("malformed HTTP response from {addr}")),
                }
            }
            Ok(Err(e)) => ProbeResult::Failure(format!("Get \"http://{addr}{path}\": {e}")),
            Err(_) => ProbeResult::Failure(format!(
                "Get \"http://{addr}{path}\": context deadline exceeded"
            )),
        };
    }
    if probe.grpc.is_some() {
        return ProbeResult::Failure("gRPC probes are not supported yet".into());
    }
    ProbeResult::Failure("the probe has no handler".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HTTPGetAction, TCPSocketAction};

    #[test]
    fn thresholds_decide_verdicts() {
        let probe = Probe {
            failure_threshold: Some(2),
            success_threshold: Some(2),
            ..Probe::default()
        };
        let mut s = State::new(&probe, Instant::now());
        let fail = ProbeResult::Failure("x".into());
        assert_eq!(s.record(&probe, &ProbeResult::Success), None);
        assert_eq!(s.record(&probe, &ProbeResult::Success), Some(true));
        assert_eq!(s.record(&probe, &ProbeResult::Success), None);
        assert_eq!(s.record(&probe, &fail), None);
        assert_eq!(s.record(&probe, &fail), Some(false));
        // Counting starts again after a failing verdict.
        assert_eq!(s.record(&probe, &fail), None);
        assert_eq!(s.record(&probe, &fail), Some(false));
    }

    #[tokio::test]
    async fn network_probes_reach_a_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /healthz HTTP/1.1"));
                s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let http = Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(port.into()),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let c = Container::default();
        assert_eq!(network_probe(&http, ip, &c).await, ProbeResult::Success);
        assert!(
            matches!(network_probe(&http, ip, &c).await, ProbeResult::Failure(m) if m.contains("503"))
        );
        server.await.unwrap();
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(port.into()),
                host: None,
            }),
            ..Probe::default()
        };
        // The listener is gone: refused.
        assert!(matches!(
            network_probe(&tcp, ip, &c).await,
            ProbeResult::Failure(_)
        ));
    }
}
