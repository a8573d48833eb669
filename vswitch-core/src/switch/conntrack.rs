//! Conntrack's settings on the control side: every change is checked as
//! a whole, applied at once and recorded for the daemon's journal.

use super::Switch;
use crate::config::ConfigChange;
use crate::conntrack::ConntrackConfig;
use crate::{Error, Result};

impl Switch {
    /// Changes conntrack's limits and timeouts: `change` edits a copy of
    /// the settings in force, which is then checked and applied whole (an
    /// error changes nothing).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] from `change` or from checking the result.
    pub fn set_conntrack_config(
        &self,
        change: impl FnOnce(&mut ConntrackConfig) -> std::result::Result<(), String>,
    ) -> Result<ConntrackConfig> {
        let _changing = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = self.ct.config();
        change(&mut c).map_err(|why| Error::invalid("conntrack settings", why))?;
        self.ct.apply_config(&c).map_err(|why| Error::invalid("conntrack settings", why))?;
        self.record(|| ConfigChange::SetConntrack { config: c.clone() });
        Ok(c)
    }
}
