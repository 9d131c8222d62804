//! Services a template asks for in `/etc/ember/services.json` (the code-interpreter template's
//! server, for one): init starts them after the agent, as root with a clean environment and
//! their output in `/var/log/ember/NAME.log`, and starts them again when they exit, after a pause
//! that doubles (200 ms up to 5 s) while they keep failing within a minute of starting.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Where templates list their services.
pub const SERVICES_FILE: &str = "/etc/ember/services.json";
const LOG_DIR: &str = "/var/log/ember";
/// Bounds on the file: it is part of a template, but a template may be a user's.
const MAX_FILE: u64 = 64 * 1024;
const MAX_SERVICES: usize = 16;
/// A log larger than this is started afresh when its service starts.
const MAX_LOG: u64 = 8 << 20;
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// A service that ran this long before exiting is restarted after the first pause again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One service: a name (for its log) and the command line.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub cmd: Vec<String>,
}

/// Why the services file was not used.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("read {SERVICES_FILE}: {0}")]
    Read(#[from] std::io::Error),
    #[error("{SERVICES_FILE} is larger than {MAX_FILE} bytes")]
    TooLarge,
    #[error("{SERVICES_FILE}: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("{SERVICES_FILE}: {0}")]
    Invalid(String),
}

/// Parses and checks a services file's contents.
pub fn parse(text: &str) -> Result<Vec<Service>, ServicesError> {
    let services: Vec<Service> = serde_json::from_str(text)?;
    if services.len() > MAX_SERVICES {
        return Err(ServicesError::Invalid(format!("more than {MAX_SERVICES} services")));
    }
    for s in &services {
        let name_ok = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(ServicesError::Invalid(format!("bad service name {:?}", s.name)));
        }
        if !s.cmd.first().is_some_and(|p| p.starts_with('/')) {
            return Err(ServicesError::Invalid(format!("service {}: cmd must start with an absolute path", s.name)));
        }
    }
    Ok(services)
}

/// Reads the services file; none when it does not exist.
pub fn load(path: &Path) -> Result<Vec<Service>, ServicesError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    if meta.len() > MAX_FILE {
        return Err(ServicesError::TooLarge);
    }
    parse(&std::fs::read_to_string(path)?)
}

/// The services and their processes.
pub struct Supervisor {
    running: Vec<Running>,
}

struct Running {
    service: Service,
    pid: Option<u32>,
    started: Instant,
    pause: Duration,
}

impl Supervisor {
    /// Starts every service.
    pub fn start(services: Vec<Service>) -> Self {
        let mut running: Vec<Running> = services
            .into_iter()
            .map(|service| Running { service, pid: None, started: Instant::now(), pause: FIRST_PAUSE })
            .collect();
        for r in &mut running {
            r.spawn();
        }
        Self { running }
    }

    /// Called with each reaped process: a service that exited is started again after its pause.
    /// Returns whether `pid` was a service's.
    pub fn reaped(&mut self, pid: u32) -> bool {
        let Some(r) = self.running.iter_mut().find(|r| r.pid == Some(pid)) else { return false };
        r.pid = None;
        r.pause = next_pause(r.pause, r.started.elapsed());
        super::init::log(&format!("ember-init: service {} exited; starting it again in {:?}", r.service.name, r.pause));
        std::thread::sleep(r.pause);
        r.spawn();
        true
    }

    /// Starts again the services that could not be started.
    pub fn retry_failed(&mut self) {
        for r in self.running.iter_mut().filter(|r| r.pid.is_none()) {
            r.spawn();
        }
    }
}

impl Running {
    fn spawn(&mut self) {
        self.started = Instant::now();
        self.pid = match spawn(&self.service) {
            Ok(pid) => Some(pid),
            Err(e) => {
                super::init::log(&format!("ember-init: cannot start service {}: {e}", self.service.name));
                None
            }
        };
    }
}

/// The pause before a restart: doubled after a short run, the first one after a long run.
fn next_pause(previous: Duration, ran: Duration) -> Duration {
    if ran >= HEALTHY_RUN {
        FIRST_PAUSE
    } else {
        (previous * 2).min(MAX_PAUSE)
    }
}

fn spawn(service: &Service) -> std::io::Result<u32> {
    std::fs::create_dir_all(LOG_DIR)?;
    let log_path = Path::new(LOG_DIR).join(format!("{}.log", service.name));
    let fresh = std::fs::metadata(&log_path).map(|m| m.len() > MAX_LOG).unwrap_or(false);
    let log = OpenOptions::new().create(true).append(!fresh).write(true).truncate(fresh).open(&log_path)?;
    let child = Command::new(&service.cmd[0])
        .args(&service.cmd[1..])
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(child.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_services() {
        let s = parse(r#"[{"name":"interpreter","cmd":["/usr/local/bin/ember-interpreter","--x"]}]"#).unwrap();
        assert_eq!(s[0].name, "interpreter");
        assert_eq!(s[0].cmd.len(), 2);
        assert!(parse("[]").unwrap().is_empty());
        for bad in [
            r#"[{"name":"../x","cmd":["/bin/true"]}]"#,
            r#"[{"name":"x","cmd":[]}]"#,
            r#"[{"name":"x","cmd":["true"]}]"#,
            r#"[{"name":"x","cmd":["/bin/true"],"user":"root"}]"#,
            r#"{"name":"x"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let many = format!("[{}]", vec![r#"{"name":"x","cmd":["/bin/true"]}"#; MAX_SERVICES + 1].join(","));
        assert!(matches!(parse(&many), Err(ServicesError::Invalid(_))));
    }

    #[test]
    fn a_missing_file_means_no_services() {
        assert!(load(Path::new("/nonexistent/services.json")).unwrap().is_empty());
    }

    #[test]
    fn restarts_back_off_while_failing_and_reset_after_a_long_run() {
        let quick = Duration::from_millis(10);
        assert_eq!(next_pause(FIRST_PAUSE, quick), FIRST_PAUSE * 2);
        assert_eq!(next_pause(Duration::from_secs(4), quick), MAX_PAUSE);
        assert_eq!(next_pause(MAX_PAUSE, HEALTHY_RUN), FIRST_PAUSE);
    }
}
