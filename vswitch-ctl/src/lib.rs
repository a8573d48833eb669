//! The client side of the control protocol: connect to a daemon's socket,
//! send one request, read one reply, with a deadline. Shared by
//! `vswitch-ctl` and the tests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// Where `vswitchd` listens unless told otherwise (`VSWITCH_SOCKET`).
pub const DEFAULT_SOCKET: &str = "/run/vswitch/vswitchd.sock";

/// The socket path: the given one, else `$VSWITCH_SOCKET`, else the default.
pub fn socket_path(given: Option<&str>) -> String {
    given
        .map(str::to_string)
        .or_else(|| std::env::var("VSWITCH_SOCKET").ok())
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string())
}

/// Why a request did not get a result.
#[derive(Debug)]
pub enum CallError {
    /// No daemon answered on the socket.
    Unreachable(String),
    /// The daemon answered with an error: (kind, message).
    Rpc(String, String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(why) => f.write_str(why),
            CallError::Rpc(_, message) => f.write_str(message),
        }
    }
}

/// A connection to a daemon.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
    timeout: Duration,
}

/// An I/O error's message without Rust's "(os error N)" suffix.
fn plain(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

impl Client {
    /// Connects to `path`, waiting at most `timeout` for each reply.
    ///
    /// # Errors
    /// [`CallError::Unreachable`] with one clear line.
    pub fn connect(path: &str, timeout: Duration) -> Result<Client, CallError> {
        let stream = UnixStream::connect(Path::new(path)).map_err(|e| {
            CallError::Unreachable(match e.kind() {
                std::io::ErrorKind::PermissionDenied => format!(
                    "permission denied on {path}: only root, the daemon's user and the group given to \
                     vswitchd --group may use it"
                ),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    format!("cannot reach vswitchd at {path}: {} (is vswitchd running?)", plain(&e))
                }
                _ => format!("cannot reach vswitchd at {path}: {}", plain(&e)),
            })
        })?;
        let _ = stream.set_read_timeout(Some(timeout));
        let _ = stream.set_write_timeout(Some(timeout));
        let reader = BufReader::new(stream.try_clone().map_err(|e| CallError::Unreachable(e.to_string()))?);
        Ok(Client { stream, reader, next_id: 1, timeout })
    }

    /// Calls `method` with `params`; returns the result.
    ///
    /// # Errors
    /// [`CallError::Rpc`] with the daemon's error; [`CallError::Unreachable`]
    /// if the connection fails or the deadline passes.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string();
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => CallError::Unreachable(format!(
                "vswitchd did not answer within {} s (a change it was asked for may still take effect: look before retrying)",
                self.timeout.as_secs()
            )),
            _ => CallError::Unreachable(format!("vswitchd did not answer: {}", plain(&e))),
        };
        self.stream.write_all(line.as_bytes()).map_err(io)?;
        self.stream.write_all(b"\n").map_err(io)?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply).map_err(io)? == 0 {
            return Err(CallError::Unreachable("vswitchd closed the connection".into()));
        }
        let v: Value = serde_json::from_str(&reply).map_err(|e| CallError::Unreachable(format!("bad reply: {e}")))?;
        match v.get("error") {
            Some(e) => Err(CallError::Rpc(
                e["data"]["kind"].as_str().unwrap_or("error").to_string(),
                e["message"].as_str().unwrap_or("unknown error").to_string(),
            )),
            None => Ok(v["result"].clone()),
        }
    }
}
