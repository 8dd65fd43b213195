//! The control endpoint: how `backfill`, `reconcile`, `refetch` and `connect` hand their work to a
//! running server, so that every write still goes through that server's one writer.
//!
//! # Protocol
//! - `serve` makes a random 256-bit token at start, and once the admin listener is bound writes
//!   `<database>.control` beside the database (created anew, mode 0600, so only the service's user
//!   can read it): `{"url": "http://127.0.0.1:<admin port>", "token": "<hex>", "pid": <pid>}`.
//!   It is removed at shutdown; a stale one (after a crash) is ignored, because the CLI only looks
//!   for it when the database lock is held.
//! - Routes on the admin listener, answered before the admin's own routing: `POST /control/work`
//!   with a [`Work`] as JSON starts a job (`202 {"job": N}`; 409 with `error` and `hint` when
//!   the same kind of work already runs; 503 when the server has no API key), and
//!   `GET /control/jobs/N` answers its [`JobView`]: progress bars, then the [`Report`] or the
//!   error. The CLI polls every 200 ms.
//! - Every request needs `Authorization: Bearer <token>` (the scheme in any case, the token
//!   compared in constant time) and must come from a loopback address (the peer, and the client
//!   a trusted proxy names); anything else is 401/403 and does nothing. The routes take no cookie,
//!   so the admin's CSRF rules do not apply to them.
//!
//! # In the CLI
//! [`Remote`] reads the file (refusing a URL that is not loopback http), starts the work and
//! polls it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::work::{self, Report, Work};
use super::StripeApi;
use crate::crypto;
use crate::error::{Error, Result};
use crate::http::{Request, Response};
use crate::ops::Progress;
use crate::periodic::Stop;
use crate::store;

/// Finished jobs kept for their CLI to read.
const JOBS_KEPT: usize = 16;
/// How often the CLI asks.
pub const POLL: Duration = Duration::from_millis(200);
/// How long the CLI waits for the control file of a server that is starting.
const STARTING: Duration = Duration::from_secs(3);

/// `<database>.control` (through symlinks, like the lock).
pub fn control_path(database: &Path) -> PathBuf {
    store::with_suffix(&store::resolve(database), ".control")
}

/// What `<database>.control` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlFile {
    pub url: String,
    pub token: String,
    pub pid: u32,
}

/// How a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Done,
    Failed,
}

/// One progress bar of a job (one per type in a backfill).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarView {
    pub label: String,
    pub done: u64,
    /// 0 when unknown (Stripe's lists do not say how long they are).
    pub total: u64,
    pub finished: bool,
}

/// Why a job failed, so the CLI can say it as it would have alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// `usage`, `refused`, or `error`.
    pub kind: String,
    pub msg: String,
    pub hint: String,
}

impl Failure {
    fn of(e: &Error) -> Failure {
        let (kind, hint) = match e {
            Error::Usage { hint, .. } => ("usage", hint.clone()),
            Error::Refused { hint, .. } => ("refused", hint.clone()),
            _ => ("error", String::new()),
        };
        Failure {
            kind: kind.into(),
            msg: e.to_string(),
            hint,
        }
    }

    /// The error, as the CLI reports it.
    pub fn into_error(self) -> Error {
        match self.kind.as_str() {
            "usage" => Error::usage(self.msg, self.hint),
            "refused" => Error::refused(self.msg, self.hint),
            _ => Error::Http {
                what: "the server's job".into(),
                msg: self.msg,
            },
        }
    }
}

/// A job as `GET /control/jobs/N` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub state: JobState,
    pub bars: Vec<BarView>,
    pub report: Option<Report>,
    pub failure: Option<Failure>,
}

/// The server side.
pub struct Control {
    token: String,
    api: Option<Arc<StripeApi>>,
    jobs: Mutex<BTreeMap<u64, Arc<Mutex<JobView>>>>,
    next: Mutex<u64>,
    stop: Arc<Stop>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Control {
    /// The endpoint of a server whose Stripe work is `api` (`None`: no API key).
    pub fn new(api: Option<Arc<StripeApi>>) -> Result<Control> {
        let token: [u8; 32] = crypto::random_bytes()?;
        Ok(Control {
            token: crypto::to_hex(&token),
            api,
            jobs: Mutex::new(BTreeMap::new()),
            next: Mutex::new(0),
            stop: Arc::new(Stop::default()),
            threads: Mutex::new(Vec::new()),
        })
    }

    /// Writes `<database>.control` for the admin listener at `admin` (mode 0600); returns its path.
    pub fn write_file(&self, database: &Path, admin: SocketAddr) -> Result<PathBuf> {
        let path = control_path(database);
        let ip = match admin.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
            ip if ip.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let file = ControlFile {
            url: format!("http://{ip}:{}", admin.port()),
            token: self.token.clone(),
            pid: std::process::id(),
        };
        let text = serde_json::to_string(&file).map_err(|e| Error::Json {
            what: "encode the control file".into(),
            err: e,
        })?;
        let what = || format!("write the control file {}", path.display());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(what(), e)),
            _ => {}
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&path).map_err(|e| Error::io(what(), e))?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| Error::io(what(), e))?;
        f.sync_all().map_err(|e| Error::io(what(), e))?;
        Ok(path)
    }

    /// Stops the jobs (each ends at its next step, keeping its cursor) and waits for them.
    pub fn stop(&self) {
        self.stop.set();
        let threads: Vec<_> = self
            .threads
            .lock()
            .expect("control threads poisoned")
            .drain(..)
            .collect();
        for t in threads {
            if t.join().is_err() {
                log::error!("a control job panicked");
            }
        }
    }

    /// Answers a request under `/control/`; `None` for any other path.
    pub fn handle(&self, req: &Request) -> Option<Response> {
        let rest = req.path.strip_prefix("/control/")?;
        // Both: a request a trusted proxy passed on comes from a loopback peer, but from a client
        // elsewhere (a proxy config that publishes `/control/` must not open it to the world).
        if !req.remote.ip().is_loopback() || !req.client.is_loopback() {
            return Some(
                Response::json_error(403, "the control endpoint answers loopback only")
                    .with_log("control=refused_remote"),
            );
        }
        let token = req.bearer().unwrap_or("");
        if !crypto::ct_eq(token.as_bytes(), self.token.as_bytes()) {
            return Some(
                Response::json_error(401, "the control token is missing or wrong")
                    .with_log("control=unauthorized"),
            );
        }
        Some(match (req.method.as_str(), rest) {
            ("POST", "work") => self.start(&req.body),
            ("GET", job) if job.starts_with("jobs/") => {
                match job["jobs/".len()..]
                    .parse::<u64>()
                    .ok()
                    .and_then(|n| self.view(n))
                {
                    Some(view) => match serde_json::to_string(&view) {
                        Ok(body) => Response::json(200, body),
                        Err(e) => Response::json_error(500, &format!("encode the job: {e}")),
                    },
                    None => Response::json_error(404, "no such job"),
                }
            }
            _ => Response::json_error(404, "no such control route"),
        })
    }

    fn view(&self, n: u64) -> Option<JobView> {
        let jobs = self.jobs.lock().expect("control jobs poisoned");
        jobs.get(&n)
            .map(|j| j.lock().expect("control job poisoned").clone())
    }

    fn start(&self, body: &[u8]) -> Response {
        let work: Work = match serde_json::from_slice(body) {
            Ok(work) => work,
            Err(e) => return Response::json_error(400, &format!("not a piece of work: {e}")),
        };
        let Some(api) = self.api.clone() else {
            return Response::json_error(
                503,
                "the server has no Stripe API key ([stripe] api_key_env is not set in its environment)",
            );
        };
        if let Err(e) = work.check() {
            return refusal(400, &e);
        }
        let busy = match work.claim(&api) {
            Ok(busy) => busy,
            Err(e) => return refusal(409, &e),
        };
        let view = Arc::new(Mutex::new(JobView {
            state: JobState::Running,
            bars: Vec::new(),
            report: None,
            failure: None,
        }));
        let n = {
            let mut next = self.next.lock().expect("control counter poisoned");
            *next += 1;
            *next
        };
        {
            let mut jobs = self.jobs.lock().expect("control jobs poisoned");
            jobs.insert(n, view.clone());
            while jobs.len() > JOBS_KEPT {
                let oldest_done = jobs
                    .iter()
                    .find(|(_, j)| {
                        j.lock().expect("control job poisoned").state != JobState::Running
                    })
                    .map(|(k, _)| *k);
                match oldest_done {
                    Some(k) => {
                        jobs.remove(&k);
                    }
                    None => break,
                }
            }
        }
        let stop = self.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("stripe-job".into())
            .spawn(move || {
                let mut progress = JobProgress(view.clone());
                let result = work::run(&api, &work, &busy, &mut progress, &stop);
                drop(busy);
                let mut v = view.lock().expect("control job poisoned");
                match result {
                    Ok(report) => {
                        v.state = JobState::Done;
                        v.report = Some(report);
                    }
                    Err(e) => {
                        log::warn!("control job failed: {e}");
                        v.state = JobState::Failed;
                        v.failure = Some(Failure::of(&e));
                    }
                }
            });
        match spawned {
            Ok(handle) => {
                let mut threads = self.threads.lock().expect("control threads poisoned");
                threads.retain(|t| !t.is_finished());
                threads.push(handle);
                Response::json(202, serde_json::json!({ "job": n }).to_string())
                    .with_log(format!("control=started job={n}"))
            }
            Err(e) => Response::json_error(500, &format!("start the job: {e}")),
        }
    }
}

fn refusal(status: u16, e: &Error) -> Response {
    let f = Failure::of(e);
    Response::json(
        status,
        serde_json::json!({ "error": f.msg, "hint": f.hint, "kind": f.kind }).to_string(),
    )
}

/// A job's progress, as the CLI will see it.
struct JobProgress(Arc<Mutex<JobView>>);

impl Progress for JobProgress {
    fn step(&mut self, done: u64, total: u64) {
        let mut v = self.0.lock().expect("control job poisoned");
        if v.bars.last().is_none_or(|b| b.finished) {
            v.bars.push(BarView {
                label: String::new(),
                done: 0,
                total: 0,
                finished: false,
            });
        }
        if let Some(bar) = v.bars.last_mut() {
            bar.done = done;
            bar.total = total;
        }
    }

    fn note(&mut self, what: &str) {
        let mut v = self.0.lock().expect("control job poisoned");
        if let Some(bar) = v.bars.last_mut() {
            bar.finished = true;
        }
        v.bars.push(BarView {
            label: what.to_owned(),
            done: 0,
            total: 0,
            finished: false,
        });
    }

    fn finish(&mut self) {
        let mut v = self.0.lock().expect("control job poisoned");
        if let Some(bar) = v.bars.last_mut() {
            bar.finished = true;
        }
    }
}

/// The CLI's side: a running server's control endpoint.
pub struct Remote {
    file: ControlFile,
    agent: ureq::Agent,
}

impl Remote {
    /// Reads the control file of the server holding `database`.
    pub fn find(database: &Path, holder: &str) -> Result<Remote> {
        let path = control_path(database);
        // A server writes the file just after it takes the lock and binds its listeners.
        let deadline = std::time::Instant::now() + STARTING;
        while !path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::refused(
                    format!(
                        "the database {} is held by {holder}, which has no control endpoint ({} is missing): another command is running, or a server from before this feature",
                        database.display(),
                        path.display()
                    ),
                    "wait for that command to finish, or restart the server",
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::refused(
                    format!(
                        "the server's control file {} is readable only by the service's user",
                        path.display()
                    ),
                    "run the command as that user (sudo -u <service user> stripe-inbox ...)",
                ))
            }
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        let file: ControlFile = serde_json::from_str(&text).map_err(|e| Error::Json {
            what: format!("read {}", path.display()),
            err: e,
        })?;
        // A file left by a server that crashed belongs to no one who holds the lock now.
        let holder_pid = holder
            .strip_prefix("stripe-inbox pid ")
            .and_then(|p| p.trim().parse::<u32>().ok());
        if holder_pid.is_some_and(|pid| pid != file.pid) {
            return Err(Error::refused(
                format!(
                    "the database {} is held by {holder}, which has no control endpoint ({} was left by process {}): another command is running",
                    database.display(),
                    path.display(),
                    file.pid
                ),
                "wait for that command to finish",
            ));
        }
        let loopback = file
            .url
            .strip_prefix("http://")
            .and_then(|rest| rest.parse::<SocketAddr>().ok())
            .is_some_and(|a| a.ip().is_loopback());
        if !loopback {
            return Err(Error::Damaged {
                path,
                msg: format!(
                    "the control URL {:?} is not a loopback http address",
                    file.url
                ),
            });
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .max_redirects(0)
            .proxy(None)
            .build()
            .into();
        Ok(Remote { file, agent })
    }

    /// Starts `work` in the server, then polls it, calling `on_progress` with its bars, until it
    /// ends; its report, or its error.
    pub fn run(&self, work: &Work, mut on_progress: impl FnMut(&[BarView])) -> Result<Report> {
        let body = serde_json::to_vec(work).map_err(|e| Error::Json {
            what: "encode the work".into(),
            err: e,
        })?;
        let (status, answer) = self.call(
            self.agent
                .post(format!("{}/control/work", self.file.url))
                .header("Authorization", &format!("Bearer {}", self.file.token))
                .header("Content-Type", "application/json")
                .send(&body[..]),
        )?;
        let answer: serde_json::Value = serde_json::from_str(&answer).map_err(|e| Error::Json {
            what: "read the server's answer".into(),
            err: e,
        })?;
        let text = |k: &str| {
            answer
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let job = match (
            status,
            answer.get("job").and_then(serde_json::Value::as_u64),
        ) {
            (202, Some(job)) => job,
            _ => {
                return Err(Failure {
                    kind: text("kind"),
                    msg: text("error"),
                    hint: text("hint"),
                }
                .into_error())
            }
        };
        loop {
            std::thread::sleep(POLL);
            let (status, body) = self.call(
                self.agent
                    .get(format!("{}/control/jobs/{job}", self.file.url))
                    .header("Authorization", &format!("Bearer {}", self.file.token))
                    .call(),
            )?;
            if status != 200 {
                return Err(Error::Http {
                    what: format!("poll job {job} in the server"),
                    msg: format!("answered {status}: {}", body.trim()),
                });
            }
            let view: JobView = serde_json::from_str(&body).map_err(|e| Error::Json {
                what: format!("read job {job}"),
                err: e,
            })?;
            on_progress(&view.bars);
            match (view.state, view.report, view.failure) {
                (JobState::Running, _, _) => {}
                (_, Some(report), _) => return Ok(report),
                (_, _, Some(failure)) => return Err(failure.into_error()),
                _ => {
                    return Err(Error::Http {
                        what: format!("job {job} in the server"),
                        msg: "ended without a report".into(),
                    })
                }
            }
        }
    }

    fn call(
        &self,
        result: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String)> {
        let what = || format!("reach the server's control endpoint {}", self.file.url);
        let mut response = result.map_err(|e| Error::Http {
            what: what(),
            msg: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| Error::Http {
                what: what(),
                msg: e.to_string(),
            })?;
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(remote: &str, client: &str) -> Request {
        Request {
            method: "GET".into(),
            path: "/control/jobs/1".into(),
            query: String::new(),
            headers: vec![],
            body: vec![],
            remote: remote.parse().unwrap(),
            client: client.parse().unwrap(),
        }
    }

    #[test]
    fn only_a_loopback_client_reaches_the_routes() {
        let control = Control::new(None).unwrap();
        let status = |remote, client| control.handle(&request(remote, client)).unwrap().status;
        assert_eq!(
            status("127.0.0.1:5000", "127.0.0.1"),
            401,
            "on to the token"
        );
        assert_eq!(status("192.0.2.1:5000", "192.0.2.1"), 403);
        assert_eq!(
            status("127.0.0.1:5000", "203.0.113.9"),
            403,
            "a client behind a trusted proxy"
        );
    }
}
