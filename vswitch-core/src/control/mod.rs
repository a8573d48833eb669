//! The control plane's wire protocol: JSON-RPC 2.0, one compact object
//! per line, over a local `SOCK_STREAM` Unix socket.
//!
//! [`dispatch`] is the protocol without I/O (a request line in, a response
//! line out) over a [`Switch`](crate::Switch); [`ControlServer`] serves it
//! on a socket. Any embedder can start one; `vswitchd` is a thin binary
//! around it.
//!
//! Methods are namespaced (`bridge.add`, `port.list`, `flow.dump`, ...;
//! `system.list_methods` names them all). Errors carry a JSON-RPC code, a
//! message, and `data.kind`: `parse_error`, `invalid_request`,
//! `method_not_found`, `invalid_params`, or the switch's own kinds
//! (`not_found`, `exists`, `invalid_argument`, `full`, `io`,
//! `unavailable`).

mod capture;
mod methods;
mod server;

pub use capture::{IDLE as CAPTURE_IDLE, MAX_CAPTURES};
pub use methods::{Control, METHODS, dispatch};
pub use server::{ControlServer, MAX_CLIENTS, MAX_LINE, OUTPUT_BUDGET, ServerOptions};
