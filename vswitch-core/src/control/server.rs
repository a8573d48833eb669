//! Serving [`dispatch`](super::dispatch) on a Unix socket with `mio`.
//!
//! One thread, non-blocking sockets: a client that connects and never
//! sends, or sends half a line, holds a buffer and nothing else. A request
//! line longer than [`MAX_LINE`] gets an error and the connection is
//! closed; beyond [`MAX_CLIENTS`] connections new ones are refused. Only
//! the socket owner's uid and root may talk to it (`SO_PEERCRED`), and the
//! socket file is mode 0660 from the moment it can be connected to: it is
//! bound inside a private directory, given its mode, then renamed into
//! place.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::Control;
use crate::{Error, Result, Switch};

/// Longest request line accepted (bytes).
pub const MAX_LINE: usize = 1 << 20;
/// Most connections served at once.
pub const MAX_CLIENTS: usize = 1024;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

#[derive(Debug)]
struct Client {
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    closing: bool,
}

/// A control socket served by its own thread; stopped (and the socket file
/// removed) on drop.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

fn bind_0660(path: &Path) -> io::Result<UnixListener> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let private =
        dir.join(format!(".{}.{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("sock"), std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::create_dir(&private)?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
    let tmp = private.join("sock");
    let result = (|| {
        let l = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
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
    /// a Unix socket at `path`.
    ///
    /// # Errors
    /// As [`ControlServer::start`].
    pub fn serve(control: Control, path: impl AsRef<Path>) -> Result<ControlServer> {
        let path = path.as_ref().to_path_buf();
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(Error::invalid(
                "control socket",
                format!("{} is in use: another switch daemon is running", path.display()),
            ));
        }
        let _ = std::fs::remove_file(&path);
        let mut listener = bind_0660(&path).map_err(|e| Error::io("bind the control socket", e))?;
        let poll = Poll::new().map_err(|e| Error::io("epoll_create", e))?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE).map_err(|e| Error::io("epoll_ctl", e))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| Error::io("eventfd", e))?);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vswitch-control".into())
            .spawn(move || serve(control, listener, poll, s))
            .map_err(|e| Error::io("thread spawn", e))?;
        Ok(ControlServer { path, stop, waker, thread: Some(thread) })
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
        let _ = std::fs::remove_file(&self.path);
    }
}

fn error_line(code: i64, kind: &str, message: &str) -> Vec<u8> {
    let mut v = serde_json::json!({
        "jsonrpc": "2.0", "id": null,
        "error": { "code": code, "message": message, "data": { "kind": kind } }
    })
    .to_string()
    .into_bytes();
    v.push(b'\n');
    v
}

fn serve(control: Control, listener: UnixListener, mut poll: Poll, stop: Arc<AtomicBool>) {
    let mut events = Events::with_capacity(256);
    let mut clients: HashMap<Token, Client> = HashMap::new();
    let mut next = 2usize;
    let me = crate::sys::euid();
    while !stop.load(Ordering::Acquire) {
        if poll.poll(&mut events, Some(Duration::from_secs(1))).is_err() {
            continue;
        }
        for ev in events.iter() {
            match ev.token() {
                WAKER => {}
                LISTENER => loop {
                    let (mut stream, _) = match listener.accept() {
                        Ok(c) => c,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    };
                    let allowed = crate::sys::peer_uid(&stream).is_ok_and(|uid| uid == 0 || uid == me);
                    if !allowed || clients.len() >= MAX_CLIENTS {
                        let why = if allowed {
                            "too many clients"
                        } else {
                            "permission denied: not the socket owner or root"
                        };
                        let _ = stream.write_all(&error_line(-32000, "unavailable", why));
                        continue;
                    }
                    let token = Token(next);
                    next += 1;
                    if poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).is_ok() {
                        clients.insert(token, Client { stream, inbuf: Vec::new(), outbuf: Vec::new(), closing: false });
                    }
                },
                token => {
                    let Some(c) = clients.get_mut(&token) else { continue };
                    if ev.is_readable() {
                        read_requests(&control, c);
                    }
                    flush(c);
                    let done = c.closing && c.outbuf.is_empty();
                    if (done || (ev.is_read_closed() && c.outbuf.is_empty()))
                        && let Some(mut c) = clients.remove(&token)
                    {
                        let _ = poll.registry().deregister(&mut c.stream);
                    }
                }
            }
        }
    }
}

fn read_requests(control: &Control, c: &mut Client) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => {
                c.closing = true;
                break;
            }
            Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                c.closing = true;
                break;
            }
        }
        if c.inbuf.len() > MAX_LINE && !c.inbuf[..].contains(&b'\n') {
            break;
        }
    }
    while let Some(end) = c.inbuf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = c.inbuf.drain(..=end).collect();
        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
        if text.trim().is_empty() {
            continue;
        }
        c.outbuf.extend_from_slice(control.dispatch(text.trim()).as_bytes());
        c.outbuf.push(b'\n');
    }
    if c.inbuf.len() > MAX_LINE {
        c.outbuf.extend(error_line(-32600, "invalid_request", &format!("request line longer than {MAX_LINE} bytes")));
        c.inbuf.clear();
        c.closing = true;
    }
}

fn flush(c: &mut Client) {
    while !c.outbuf.is_empty() {
        match c.stream.write(&c.outbuf) {
            Ok(0) => break,
            Ok(n) => {
                c.outbuf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                c.outbuf.clear();
                c.closing = true;
                break;
            }
        }
    }
}
