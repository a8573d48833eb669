//! Native tunnelling's tables, as operators see them: the routes the
//! tunnels choose from and the neighbour cache (`vswitch-ctl tnl-route-show`,
//! `tnl-neigh-show`, `tnl-neigh-flush`, `tnl-neigh-aging`).

use super::Switch;
use crate::port::tunnel::native::{TunnelNeighbour, TunnelRoute};
use crate::{Error, Result};

/// The longest neighbour aging `set_tunnel_neigh_aging` takes, in seconds.
pub const MAX_NEIGH_AGING_S: u64 = 3_600;

impl Switch {
    /// The kernel's IPv4 routes as native tunnels see them (most specific
    /// first), each naming the uplink port on its interface if there is
    /// one.
    pub fn tunnel_routes(&self) -> Vec<TunnelRoute> {
        self.native.routes()
    }

    /// The native tunnels' neighbour cache.
    pub fn tunnel_neighbours(&self) -> Vec<TunnelNeighbour> {
        self.native.neighbours()
    }

    /// Forgets every neighbour (each is asked for again when next used);
    /// returns how many there were.
    pub fn flush_tunnel_neighbours(&self) -> usize {
        self.native.flush_neighbours()
    }

    /// How long a neighbour is kept without being heard from, in seconds.
    pub fn tunnel_neigh_aging(&self) -> u64 {
        self.native.aging()
    }

    /// Sets the neighbour aging time (1 to 3,600 seconds; the default is
    /// 300). An entry in use is asked for again at half of it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] outside that range.
    pub fn set_tunnel_neigh_aging(&self, seconds: u64) -> Result<()> {
        if !(1..=MAX_NEIGH_AGING_S).contains(&seconds) {
            return Err(Error::invalid("aging", format!("{seconds}: expected 1 to {MAX_NEIGH_AGING_S} seconds")));
        }
        self.native.set_aging(seconds);
        Ok(())
    }
}
