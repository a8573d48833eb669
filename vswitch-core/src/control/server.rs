//! Serving [`Control::dispatch`](super::Control::dispatch) on a Unix socket,
//! and [`Control::tick`](super::Control::tick) once a second.
//!
//! One event-loop thread (`mio`) owns every socket; requests run on a few
//! worker threads, so a slow request (a datapath thread that does not
//! answer, a million-rule load) never stalls the other clients. No client
//! can stall the server either:
//!
//! - Framing is linear: each byte is looked at a bounded number of times,
//!   however requests are pipelined.
//! - A line longer than [`MAX_LINE`] is refused as soon as a read makes it
//!   so (a structured error, then the connection is closed), newline or not.
//! - One request per connection runs at a time, in order. A connection's
//!   unsent replies are bounded by [`OUTPUT_BUDGET`]: past it the server
//!   stops reading from that client until it reads its replies.
//! - A connection with nothing in flight and no traffic for the idle
//!   timeout is closed.
//! - When descriptors run out (EMFILE) or [`MAX_CLIENTS`] are connected,
//!   the longest-idle connection is closed to let the new one in, or, if
//!   none is idle, the new one gets an error; accepting always resumes.
//! - Shutdown stops accepting, answers what is in flight, tells requests
//!   that arrive meanwhile that the daemon is stopping, and flushes every
//!   reply before closing.
//!
//! Access: root, the socket owner's uid and, if [`ServerOptions::group`]
//! names one, the members of that group. The socket file is mode 0600, or
//! 0660 owned by that group, from the moment it can be connected to (it is
//! bound inside a private directory, given its mode, then renamed into
//! place); the server checks each peer's credentials (`SO_PEERCRED`,
//! `SO_PEERGROUPS`) against the same rule.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};
use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::Control;
use crate::{Error, Result, Switch};

/// Longest request line accepted (bytes).
pub const MAX_LINE: usize = 1 << 20;
/// Most connections served at once.
pub const MAX_CLIENTS: usize = 1024;
/// Unsent reply bytes a connection may hold before its requests are no
/// longer read.
pub const OUTPUT_BUDGET: usize = 1 << 20;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Bytes read from a client at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Longest wait for in-flight requests and unsent replies at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// A connection must have been idle this long to be closed for a new one.
const EVICT_AFTER: Duration = Duration::from_millis(500);

/// How a [`ControlServer`] treats its clients.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    idle_timeout: Duration,
    workers: usize,
    group: Option<u32>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { idle_timeout: Duration::from_secs(300), workers: 4, group: None }
    }
}

impl ServerOptions {
    /// Closes a connection that has nothing in flight and has sent or read
    /// nothing for `timeout` (default 5 minutes).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Threads that run requests (default 4): how many slow requests can
    /// be in flight before others wait.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Lets the members of group `gid` use the socket too (it becomes
    /// mode 0660, owned by that group), as Open vSwitch does.
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(gid);
        self
    }
}

/// A control socket served by its own threads; stopped (replies flushed,
/// the socket file removed) on drop.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    housekeeping: Option<JoinHandle<()>>,
}

fn bind(path: &Path, group: Option<u32>) -> io::Result<UnixListener> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let private =
        dir.join(format!(".{}.{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("sock"), std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::create_dir(&private)?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
    let tmp = private.join("sock");
    let result = (|| {
        let l = UnixListener::bind(&tmp)?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

impl ControlServer {
    /// Serves `switch` on a Unix socket at `path`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a live server already answers on
    /// `path`; [`Error::Io`] if the socket cannot be created. A stale
    /// socket file (nobody listening) is replaced.
    pub fn start(switch: Arc<Switch>, path: impl AsRef<Path>) -> Result<ControlServer> {
        Self::serve(Control::new(switch), path)
    }

    /// Serves `control` (a switch, perhaps with a configuration store) on
    /// a Unix socket at `path`, with default [`ServerOptions`].
    ///
    /// # Errors
    /// As [`ControlServer::start`].
    pub fn serve(control: Control, path: impl AsRef<Path>) -> Result<ControlServer> {
        Self::serve_with(control, path, ServerOptions::default())
    }

    /// As [`ControlServer::serve`], with `options`.
    ///
    /// # Errors
    /// As [`ControlServer::start`]; [`Error::Io`] if the socket cannot be
    /// given to the group.
    pub fn serve_with(control: Control, path: impl AsRef<Path>, options: ServerOptions) -> Result<ControlServer> {
        let path = path.as_ref().to_path_buf();
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(Error::invalid(
                "control socket",
                format!("{} is in use: another switch daemon is running", path.display()),
            ));
        }
        let _ = std::fs::remove_file(&path);
        let mut listener = bind(&path, options.group).map_err(|e| Error::io("bind the control socket", e))?;
        let poll = Poll::new().map_err(|e| Error::io("epoll_create", e))?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE).map_err(|e| Error::io("epoll_ctl", e))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| Error::io("eventfd", e))?);
        let stop = Arc::new(AtomicBool::new(false));
        let control = Arc::new(control);
        let mut server = Server::new(control.clone(), listener, poll, waker.clone(), stop.clone(), options)?;
        let (c, s) = (control, stop.clone());
        let housekeeping = std::thread::Builder::new()
            .name("vswitch-ctl-tick".into())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    std::thread::park_timeout(Duration::from_secs(1));
                    c.tick();
                }
            })
            .map_err(|e| Error::io("thread spawn", e))?;
        let thread = std::thread::Builder::new()
            .name("vswitch-control".into())
            .spawn(move || server.run())
            .map_err(|e| Error::io("thread spawn", e))?;
        Ok(ControlServer { path, stop, waker, thread: Some(thread), housekeeping: Some(housekeeping) })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.housekeeping.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An error reply (one line, newline included) to the request `line`
/// (its `id` if it has a readable one, else null).
fn error_line(line: &str, code: i64, kind: &str, message: &str) -> Vec<u8> {
    let id = serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v.get("id").cloned());
    let mut v = serde_json::json!({
        "jsonrpc": "2.0", "id": id,
        "error": { "code": code, "message": message, "data": { "kind": kind } }
    })
    .to_string()
    .into_bytes();
    v.push(b'\n');
    v
}

/// What the accept loop does after a connection taken under EMFILE.
enum Next {
    Continue,
    Done,
    Retry,
}

/// A request for a worker, and its reply.
struct Job {
    token: Token,
    line: String,
}

/// One client connection.
#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    /// Bytes received and not yet consumed start at `start`; complete
    /// lines end before `complete`; bytes before `scanned` were searched
    /// for newlines.
    inbuf: Vec<u8>,
    start: usize,
    complete: usize,
    outbuf: Vec<u8>,
    out_pos: usize,
    /// A request of this connection is with a worker.
    busy: bool,
    /// The client shut its sending side.
    eof: bool,
    /// A line grew past MAX_LINE: answer the complete lines, then refuse.
    overlong: bool,
    /// Close once the replies are flushed.
    closing: bool,
    last_active: Instant,
}

impl Conn {
    fn new(stream: UnixStream) -> Conn {
        Conn {
            stream,
            inbuf: Vec::new(),
            start: 0,
            complete: 0,
            outbuf: Vec::new(),
            out_pos: 0,
            busy: false,
            eof: false,
            overlong: false,
            closing: false,
            last_active: Instant::now(),
        }
    }

    fn unsent(&self) -> usize {
        self.outbuf.len() - self.out_pos
    }

    fn idle(&self) -> bool {
        !self.busy && self.start == self.complete && self.unsent() == 0
    }

    fn reply(&mut self, bytes: &[u8]) {
        self.outbuf.extend_from_slice(bytes);
        if !bytes.ends_with(b"\n") {
            self.outbuf.push(b'\n');
        }
    }

    /// Sends what it can; true if anything went.
    fn flush(&mut self) -> bool {
        let mut sent = false;
        while self.unsent() > 0 {
            match self.stream.write(&self.outbuf[self.out_pos..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.out_pos += n;
                    self.last_active = Instant::now();
                    sent = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The client is gone: nothing more to say to it.
                    self.out_pos = self.outbuf.len();
                    self.closing = true;
                    self.eof = true;
                    break;
                }
            }
        }
        if self.out_pos == self.outbuf.len() {
            self.outbuf.clear();
            self.out_pos = 0;
        } else if self.out_pos > OUTPUT_BUDGET {
            self.outbuf.drain(..self.out_pos);
            self.out_pos = 0;
        }
        sent
    }

    /// Whether to read more: there is room for input and output.
    fn wants_input(&self) -> bool {
        !self.eof
            && !self.closing
            && !self.overlong
            && self.inbuf.len() - self.start < MAX_LINE + READ_CHUNK
            && self.unsent() < OUTPUT_BUDGET
    }

    /// One read; true if bytes came in (or the client closed).
    fn read(&mut self) -> bool {
        if !self.wants_input() {
            return false;
        }
        // Drop consumed bytes once they are most of the buffer (amortised
        // linear: each byte is moved at most once per halving).
        if self.start > 0 && self.start * 2 >= self.inbuf.len() {
            self.inbuf.drain(..self.start);
            self.complete -= self.start;
            self.start = 0;
        }
        let old = self.inbuf.len();
        self.inbuf.resize(old + READ_CHUNK, 0);
        let r = self.stream.read(&mut self.inbuf[old..]);
        let n = match r {
            Ok(n) => n,
            Err(ref e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(ref e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.inbuf.truncate(old);
                return false;
            }
            Err(_) => {
                self.inbuf.truncate(old);
                self.eof = true;
                self.closing = true;
                return true;
            }
        };
        self.inbuf.truncate(old + n);
        if n == 0 && r.is_ok() {
            self.eof = true;
            return true;
        }
        self.last_active = Instant::now();
        // Only the new bytes are searched: the last newline in them ends
        // the complete lines.
        if let Some(nl) = self.inbuf[old..].iter().rposition(|&b| b == b'\n') {
            self.complete = old + nl + 1;
        }
        if self.inbuf.len() - self.complete > MAX_LINE {
            self.inbuf.truncate(self.complete);
            self.overlong = true;
        }
        true
    }

    /// The next complete request line, if any (empty lines skipped).
    fn next_line(&mut self) -> Option<String> {
        while self.start < self.complete {
            let rest = &self.inbuf[self.start..self.complete];
            let nl = rest.iter().position(|&b| b == b'\n').expect("complete lines end in a newline");
            let line = String::from_utf8_lossy(&rest[..nl]).trim().to_string();
            self.start += nl + 1;
            if self.start == self.inbuf.len() {
                self.inbuf.clear();
                (self.start, self.complete) = (0, 0);
            }
            if !line.is_empty() {
                return Some(line);
            }
        }
        None
    }
}

struct Server {
    listener: Option<UnixListener>,
    poll: Poll,
    stop: Arc<AtomicBool>,
    options: ServerOptions,
    conns: HashMap<Token, Conn>,
    next: usize,
    me: u32,
    /// A descriptor kept free so that a connection can still be accepted
    /// (and closed, or let in after evicting an idle one) under EMFILE.
    spare: Option<std::fs::File>,
    /// Accepting failed for want of a descriptor: try again on the tick.
    retry_accept: bool,
    jobs: Option<Sender<Job>>,
    /// Set when the shutdown grace is over: queued requests are dropped.
    discard: Arc<AtomicBool>,
    done: Receiver<(Token, String)>,
    workers: Vec<JoinHandle<()>>,
    shutting_down: bool,
}

impl Server {
    fn new(
        control: Arc<Control>,
        listener: UnixListener,
        poll: Poll,
        waker: Arc<Waker>,
        stop: Arc<AtomicBool>,
        options: ServerOptions,
    ) -> Result<Server> {
        let (jobs, job_rx) = crossbeam::channel::unbounded::<Job>();
        let (done_tx, done) = crossbeam::channel::unbounded();
        let discard = Arc::new(AtomicBool::new(false));
        let workers = (0..options.workers)
            .map(|i| {
                let (rx, tx, control, waker) = (job_rx.clone(), done_tx.clone(), control.clone(), waker.clone());
                let discard = discard.clone();
                std::thread::Builder::new()
                    .name(format!("vswitch-ctl{i}"))
                    .spawn(move || {
                        for job in rx {
                            // Past the shutdown grace nobody waits for
                            // replies: what is still queued is not run.
                            if discard.load(Ordering::Acquire) {
                                continue;
                            }
                            // A bug in a handler costs that request, not
                            // the worker.
                            let reply =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| control.dispatch(&job.line)))
                                    .unwrap_or_else(|_| {
                                        let why = "internal error: the request's handler panicked";
                                        String::from_utf8_lossy(&error_line(&job.line, -32603, "internal", why))
                                            .into_owned()
                                    });
                            let _ = tx.send((job.token, reply));
                            let _ = waker.wake();
                        }
                    })
                    .map_err(|e| Error::io("thread spawn", e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Server {
            listener: Some(listener),
            poll,
            stop,
            options,
            conns: HashMap::new(),
            next: 2,
            me: crate::sys::euid(),
            spare: std::fs::File::open("/dev/null").ok(),
            retry_accept: false,
            jobs: Some(jobs),
            discard,
            done,
            workers,
            shutting_down: false,
        })
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut grace_until = None;
        loop {
            if !self.shutting_down && self.stop.load(Ordering::Acquire) {
                self.begin_shutdown();
                grace_until = Some(Instant::now() + SHUTDOWN_GRACE);
            }
            if let Some(until) = grace_until
                && (self.conns.values().all(|c| !c.busy && c.unsent() == 0) || Instant::now() >= until)
            {
                break;
            }
            let tick = if self.retry_accept || self.shutting_down { 50 } else { 1000 };
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(tick)))
                && e.kind() != io::ErrorKind::Interrupted
            {
                // Nothing to do but try again; do not spin.
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut touched = Vec::new();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    token => touched.push(token),
                }
            }
            while let Ok((token, reply)) = self.done.try_recv() {
                if let Some(c) = self.conns.get_mut(&token) {
                    c.busy = false;
                    c.reply(reply.as_bytes());
                    touched.push(token);
                }
            }
            if self.retry_accept {
                self.accept();
            }
            for token in touched {
                self.pump(token);
            }
            self.sweep_idle();
        }
        // Workers finish what they hold (each call has its own deadline)
        // and drop what is queued; then the switch is theirs no more.
        self.discard.store(true, Ordering::Release);
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        for t in tokens {
            self.pump(t);
        }
    }

    fn accept(&mut self) {
        self.retry_accept = false;
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR)) => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors: give up the spare one to take
                    // this connection, make room or refuse it, and get
                    // the spare back.
                    // (accept(2) reports EMFILE before it looks at the
                    // queue, so an empty queue shows only now.)
                    self.spare = None;
                    let taken = self.listener.as_ref().map(|l| l.accept());
                    let next = match taken {
                        Some(Ok((stream, _))) => {
                            if self.evict_idle() {
                                self.admit(stream);
                            } else {
                                refuse(stream, "too many connections and none idle: try again");
                            }
                            Next::Continue
                        }
                        Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Next::Done,
                        Some(Err(e)) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR)) => {
                            Next::Continue
                        }
                        _ => Next::Retry,
                    };
                    self.spare = std::fs::File::open("/dev/null").ok();
                    // Without the spare, the next try needs the tick.
                    match next {
                        Next::Continue if self.spare.is_some() => {}
                        Next::Done if self.spare.is_some() => return,
                        _ => {
                            self.retry_accept = true;
                            return;
                        }
                    }
                }
                Err(_) => {
                    self.retry_accept = true;
                    return;
                }
            }
        }
    }

    fn allowed(&self, stream: &UnixStream) -> bool {
        let Ok((uid, gid)) = crate::sys::peer_cred(stream) else { return false };
        if uid == 0 || uid == self.me {
            return true;
        }
        match self.options.group {
            Some(g) => gid == g || crate::sys::peer_groups(stream).is_ok_and(|groups| groups.contains(&g)),
            None => false,
        }
    }

    fn admit(&mut self, mut stream: UnixStream) {
        if !self.allowed(&stream) {
            let who = match self.options.group {
                Some(g) => format!("root, uid {} and members of group {g}", self.me),
                None => format!("root and uid {}", self.me),
            };
            return refuse(stream, &format!("permission denied: only {who} may use this socket"));
        }
        if self.conns.len() >= MAX_CLIENTS && !self.evict_idle() {
            return refuse(stream, "too many connections and none idle: try again");
        }
        let token = Token(self.next);
        self.next += 1;
        if self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).is_ok() {
            self.conns.insert(token, Conn::new(stream));
            // Edge-triggered: read what may already be there.
            self.pump(token);
        }
    }

    /// Closes the connection idle longest (at least EVICT_AFTER) to make
    /// room; false if none is idle.
    fn evict_idle(&mut self) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| c.idle() && c.last_active.elapsed() >= EVICT_AFTER)
            .min_by_key(|(_, c)| c.last_active)
            .map(|(t, _)| *t);
        victim.is_some_and(|t| {
            self.close(t);
            true
        })
    }

    fn sweep_idle(&mut self) {
        let idle = self.options.idle_timeout;
        let expired: Vec<Token> =
            self.conns.iter().filter(|(_, c)| !c.busy && c.last_active.elapsed() >= idle).map(|(t, _)| *t).collect();
        for t in expired {
            self.close(t);
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut c) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    /// Moves a connection along as far as it can go: flush replies, hand
    /// the next request to a worker, read more; then close it if done.
    fn pump(&mut self, token: Token) {
        let Some(c) = self.conns.get_mut(&token) else { return };
        loop {
            let mut progress = c.flush();
            if !c.busy && c.unsent() < OUTPUT_BUDGET {
                if let Some(line) = c.next_line() {
                    progress = true;
                    match (&self.jobs, self.shutting_down) {
                        (Some(jobs), false) => {
                            c.busy = true;
                            let _ = jobs.send(Job { token, line });
                        }
                        _ => c.reply(&error_line(&line, -32000, "unavailable", "vswitchd is shutting down")),
                    }
                } else if c.overlong {
                    c.reply(&error_line(
                        "",
                        -32600,
                        "invalid_request",
                        &format!("request line longer than {MAX_LINE} bytes; closing the connection"),
                    ));
                    c.overlong = false;
                    c.closing = true;
                    progress = true;
                }
            }
            progress |= c.read();
            if !progress {
                break;
            }
        }
        let finished = c.idle() && (c.closing || c.eof);
        if finished {
            self.close(token);
        }
    }
}

/// Tells a client it cannot be served, without waiting for it.
fn refuse(mut stream: UnixStream, why: &str) {
    let _ = stream.write_all(&error_line("", -32000, "unavailable", why));
}
