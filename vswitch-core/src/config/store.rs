//! Where a daemon keeps the configuration (feature `daemon`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigChange, FORMAT_VERSION, SwitchConfig};
use crate::{Error, Result};

fn file_error(what: String, e: std::io::Error) -> Error {
    Error::io("configuration file", std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// Where a daemon keeps its configuration: a snapshot file and a journal.
///
/// The snapshot (`PATH`) is the whole [`SwitchConfig`], written atomically
/// (a temporary file of a unique name, fsync, rename, fsync of the
/// directory), numbered by a generation. The journal (`PATH.journal`)
/// names the generation it follows on its first line, then holds one line
/// per change (a JSON array of the [`ConfigChange`]s one request made),
/// appended and synced after each change, so a
/// change costs what it changed, not the size of the configuration. When
/// the journal outgrows the snapshot, the caller writes a new snapshot
/// ([`Store::save`]), which starts a new journal. A journal that follows
/// another generation (a crash between the two renames) is already in
/// the snapshot and is ignored; a torn last line (a crash mid-append, so
/// never acknowledged) is dropped. Temporary files left by a crash are
/// removed when the store is opened.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    state: std::sync::Mutex<Journal>,
}

#[derive(Debug, Default)]
struct Journal {
    /// The generation of the snapshot on disk.
    generation: u64,
    /// The journal, open for appending (None: write a snapshot first).
    file: Option<std::fs::File>,
    bytes: u64,
    snapshot_bytes: u64,
}

/// A journal's first line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalHeader {
    base: u64,
}

/// What [`Store::load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No file yet: a first start.
    Missing,
    /// The configuration.
    Config(SwitchConfig),
    /// The file could not be read as a configuration (unparseable,
    /// truncated, from a newer version, or its journal is): nothing was
    /// loaded and the files are as they were. Starting empty over it
    /// would lose every bridge at the next save; see
    /// [`Store::set_aside`].
    Unusable {
        /// Why it could not be read.
        reason: String,
    },
}

/// A journal this much larger than the snapshot calls for a new snapshot.
const JOURNAL_SLACK: u64 = 1 << 20;

impl Store {
    /// A store at `path`, creating its directory and removing temporary
    /// files an interrupted save left behind.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be created.
    pub fn new(path: impl Into<PathBuf>) -> Result<Store> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| file_error(format!("create {}", dir.display()), e))?;
        }
        let store = Store { path, state: Default::default() };
        store.remove_temporaries();
        Ok(store)
    }

    fn journal_path(&self) -> PathBuf {
        PathBuf::from(format!("{}.journal", self.path.display()))
    }

    fn temporary(&self, of: &Path) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PathBuf::from(format!("{}.tmp-{}-{n}", of.display(), std::process::id()))
    }

    fn remove_temporaries(&self) {
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else { return };
        let prefixes = [format!("{name}.tmp-"), format!("{name}.journal.tmp-")];
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let n = entry.file_name();
            if n.to_str().is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p.as_str()))) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the snapshot and replays the journal that follows it. A
    /// snapshot (or journal) that cannot be used is reported and left
    /// untouched.
    ///
    /// # Errors
    /// [`Error::Io`] if the files exist but cannot be read.
    pub fn load(&self) -> Result<Loaded> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(e) => return Err(file_error(format!("read {}", self.path.display()), e)),
        };
        let reason = match serde_json::from_slice::<SwitchConfig>(&text) {
            Ok(c) if c.version == FORMAT_VERSION => match self.replay_journal(c, text.len() as u64) {
                Ok(c) => return Ok(Loaded::Config(c)),
                Err(e) => format!("its journal {}: {e}", self.journal_path().display()),
            },
            Ok(c) if c.version > FORMAT_VERSION => {
                format!("it is format version {}, from a newer vswitchd (this one reads {FORMAT_VERSION})", c.version)
            }
            Ok(c) => format!("format version {} (this vswitchd reads {FORMAT_VERSION})", c.version),
            Err(e) if e.is_eof() => format!("it ends early, truncated ({e})"),
            Err(e) => format!("it is not a configuration: {e}"),
        };
        Ok(Loaded::Unusable { reason })
    }

    /// Moves the configuration and its journal aside, to
    /// `PATH.reset-SECONDS` (never over an existing file), so the switch
    /// can start empty on purpose; returns where it went (`None` if there
    /// was no file).
    ///
    /// # Errors
    /// [`Error::Io`] if a file cannot be moved.
    pub fn set_aside(&self) -> Result<Option<PathBuf>> {
        if !self.path.exists() && !self.journal_path().exists() {
            return Ok(None);
        }
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut kept = PathBuf::from(format!("{}.reset-{secs}", self.path.display()));
        let mut n = 1;
        while kept.exists() || PathBuf::from(format!("{}.journal", kept.display())).exists() {
            kept = PathBuf::from(format!("{}.reset-{secs}-{n}", self.path.display()));
            n += 1;
        }
        let mv = |from: &Path, to: &Path| match std::fs::rename(from, to) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(file_error(format!("move {} aside to {}", from.display(), to.display()), e))
            }
            _ => Ok(()),
        };
        mv(&self.path, &kept)?;
        mv(&self.journal_path(), Path::new(&format!("{}.journal", kept.display())))?;
        *self.lock() = Journal::default();
        Ok(Some(kept))
    }

    /// Where the previous snapshot is kept: `PATH.prev` (and its journal,
    /// `PATH.prev.journal`), a configuration `vswitchd --db` can load.
    pub fn backup_path(&self) -> PathBuf {
        PathBuf::from(format!("{}.prev", self.path.display()))
    }

    /// Keeps the snapshot about to be replaced, with its journal, as the
    /// backup: a hard link (the old file itself, no copy), then the
    /// journal copied, each through a temporary and a rename.
    fn keep_previous(&self) -> Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        let prev = self.backup_path();
        let io = |what: &str, e| file_error(format!("{what} {}", prev.display()), e);
        let tmp = self.temporary(&self.path);
        std::fs::hard_link(&self.path, &tmp).map_err(|e| io("link the backup", e))?;
        std::fs::rename(&tmp, &prev).map_err(|e| io("replace the backup", e))?;
        let prev_journal = PathBuf::from(format!("{}.journal", prev.display()));
        match std::fs::read(self.journal_path()) {
            Ok(j) => {
                let jtmp = self.temporary(&self.journal_path());
                std::fs::write(&jtmp, j).map_err(|e| io("write the backup journal of", e))?;
                std::fs::rename(&jtmp, &prev_journal).map_err(|e| io("replace the backup journal of", e))?;
            }
            Err(_) => {
                let _ = std::fs::remove_file(&prev_journal);
            }
        }
        Ok(())
    }

    /// `config` (the snapshot, `snapshot_bytes` long) with its journal
    /// replayed; the journal is then kept open for appending.
    fn replay_journal(&self, mut config: SwitchConfig, snapshot_bytes: u64) -> Result<SwitchConfig> {
        let mut state = self.lock();
        *state = Journal { generation: config.generation, file: None, bytes: 0, snapshot_bytes };
        let jpath = self.journal_path();
        let text = match std::fs::read(&jpath) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SwitchConfig { generation: 0, ..config }),
            Err(e) => return Err(file_error(format!("read {}", jpath.display()), e)),
        };
        let mut lines = text.split(|&b| b == b'\n');
        let header = lines.next().and_then(|l| serde_json::from_slice::<JournalHeader>(l).ok());
        if header.is_none_or(|h| h.base != config.generation) {
            // Written before the snapshot, which holds all of it.
            return Ok(SwitchConfig { generation: 0, ..config });
        }
        let lines: Vec<&[u8]> = lines.collect();
        let mut changes = Vec::with_capacity(lines.len());
        let mut good = text.len();
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_slice::<Vec<ConfigChange>>(line) {
                Ok(c) => changes.extend(c),
                Err(_) if line.is_empty() && i + 1 == lines.len() => {}
                Err(_) if i + 1 == lines.len() => good -= line.len(),
                Err(e) => return Err(Error::invalid("journal", format!("line {}: {e}", i + 2))),
            }
        }
        config.replay(&changes)?;
        config.generation = 0;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&jpath)
            .map_err(|e| file_error(format!("open {}", jpath.display()), e))?;
        // Drop a torn last line before appending after it.
        f.set_len(good as u64).map_err(|e| file_error(format!("truncate {}", jpath.display()), e))?;
        use std::io::Seek;
        f.seek(std::io::SeekFrom::End(0)).map_err(|e| file_error(format!("seek {}", jpath.display()), e))?;
        state.file = Some(f);
        state.bytes = good as u64;
        Ok(config)
    }

    /// Writes `config` as a new snapshot, atomically (a reader, or a
    /// crash, sees the old snapshot and journal or the new ones, never a
    /// mix), and starts an empty journal after it.
    ///
    /// # Errors
    /// [`Error::Io`] if any step fails; the files on disk still hold the
    /// configuration as it was.
    pub fn save(&self, config: &SwitchConfig) -> Result<()> {
        self.save_with(config, || Ok(()))
    }

    /// [`save`](Self::save), calling `between` after the new snapshot is
    /// written and synced and before it replaces the old one (tests use it
    /// to fail there, as a crash would).
    #[doc(hidden)]
    pub fn save_with(&self, config: &SwitchConfig, between: impl FnOnce() -> std::io::Result<()>) -> Result<()> {
        let mut state = self.lock();
        let io = |what: &str, e| file_error(format!("{what} {}", self.path.display()), e);
        let generation = state.generation + 1;
        let mut text = serde_json::to_vec_pretty(&SwitchConfig { generation, ..config.clone() })
            .map_err(|e| io("serialize", std::io::Error::other(e)))?;
        text.push(b'\n');
        let tmp = self.temporary(&self.path);
        let written = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(|e| io("create a temporary file for", e))?;
            f.write_all(&text).and_then(|_| f.sync_all()).map_err(|e| io("write", e))?;
            between().map_err(|e| io("write", e))?;
            self.keep_previous()?;
            std::fs::rename(&tmp, &self.path).map_err(|e| io("replace", e))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        self.sync_dir()?;
        state.generation = generation;
        state.snapshot_bytes = text.len() as u64;
        state.file = None;
        state.bytes = 0;
        // The new journal: its header, then nothing.
        let jpath = self.journal_path();
        let jtmp = self.temporary(&jpath);
        let mut header = serde_json::to_vec(&JournalHeader { base: generation }).expect("a header serializes");
        header.push(b'\n');
        let started = (|| {
            let mut f = std::fs::File::create(&jtmp).map_err(|e| io("create the journal of", e))?;
            f.write_all(&header).and_then(|_| f.sync_all()).map_err(|e| io("write the journal of", e))?;
            std::fs::rename(&jtmp, &jpath).map_err(|e| io("replace the journal of", e))?;
            Ok::<_, Error>(f)
        })();
        match started {
            Ok(f) => {
                self.sync_dir()?;
                state.bytes = header.len() as u64;
                state.file = Some(f);
                Ok(())
            }
            Err(e) => {
                // The snapshot is complete; the next change writes another.
                let _ = std::fs::remove_file(&jtmp);
                Err(e)
            }
        }
    }

    fn sync_dir(&self) -> Result<()> {
        // A rename is durable once its directory is synced.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| file_error(format!("sync the directory of {}", self.path.display()), e))?;
        }
        Ok(())
    }

    /// Appends `changes` to the journal and syncs it. Returns false if
    /// there is no journal to append to (nothing saved yet) or the journal
    /// has outgrown the snapshot: the caller then writes a snapshot with
    /// [`save`](Self::save).
    ///
    /// # Errors
    /// [`Error::Io`] if the write fails; the journal is then cut back to
    /// where it was.
    pub fn append(&self, changes: &[ConfigChange]) -> Result<bool> {
        let mut state = self.lock();
        let before = state.bytes;
        let Some(f) = state.file.as_mut() else { return Ok(false) };
        if changes.is_empty() {
            return Ok(true);
        }
        // One line per request: a crash mid-write loses the whole line,
        // never half of one request's changes.
        let mut text = serde_json::to_vec(changes).map_err(|e| file_error("serialize a change".into(), e.into()))?;
        text.push(b'\n');
        if let Err(e) = f.write_all(&text).and_then(|_| f.sync_data()) {
            // Cut back and stop appending: the next change writes a whole
            // snapshot, which holds these changes too.
            let _ = f.set_len(before);
            state.file = None;
            return Err(file_error(format!("append to {}", self.journal_path().display()), e));
        }
        state.bytes += text.len() as u64;
        Ok(state.bytes <= state.snapshot_bytes.max(JOURNAL_SLACK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BridgeConfig, ConntrackConfig, FailMode, MirrorSpec, PortKind, PortSpec, StaticMac};
    use crate::mac::MacTableConfig;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vswitch-config-{}-{name}", std::process::id())).join("conf.json")
    }

    #[test]
    fn save_then_load_round_trips() {
        let path = temp("rt");
        let store = Store::new(&path).unwrap();
        assert!(matches!(store.load().unwrap(), Loaded::Missing));
        let mut p = PortSpec::new("veth0", PortKind::AfXdp);
        p.port_no = Some(3);
        p.tag = Some(10);
        p.options.insert("xdp_mode".into(), "generic".into());
        let cfg = SwitchConfig {
            version: FORMAT_VERSION,
            generation: 0,
            bridges: vec![BridgeConfig {
                name: "br0".into(),
                mac_table: MacTableConfig::default(),
                ports: vec![p],
                flows: vec!["priority=0,actions=NORMAL".into()],
                static_macs: vec![StaticMac {
                    port: "veth0".into(),
                    vlan: 10,
                    mac: "02:00:00:00:00:01".parse().unwrap(),
                }],
                groups: vec!["group_id=1,type=all,bucket=bucket_id:0,actions=output:1".into()],
                fail_mode: Some(FailMode::Secure),
                mirrors: vec![MirrorSpec {
                    name: "m0".into(),
                    select_all: true,
                    select_src_port: vec![],
                    select_dst_port: vec![],
                    select_vlan: vec![10],
                    output_port: "veth0".into(),
                }],
            }],
            conntrack: Some(ConntrackConfig { limit: 1000, ..ConntrackConfig::default() }),
        };
        store.save(&cfg).unwrap();
        match Store::new(&path).unwrap().load().unwrap() {
            Loaded::Config(c) => assert_eq!(c, cfg),
            other => panic!("{other:?}"),
        }
        assert_eq!(temporaries(&path), 0);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    fn temporaries(path: &Path) -> usize {
        std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .count()
    }

    fn one_bridge() -> SwitchConfig {
        let mut c = SwitchConfig::default();
        c.replay(&[ConfigChange::NewBridge { name: "br0".into(), mac_table: MacTableConfig::default() }]).unwrap();
        c
    }

    fn loaded(path: &Path) -> SwitchConfig {
        match Store::new(path).unwrap().load().unwrap() {
            Loaded::Config(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn changes_are_journalled_and_replayed_over_the_snapshot() {
        let path = temp("journal");
        let store = Store::new(&path).unwrap();
        assert!(!store.append(&[]).unwrap(), "nothing saved yet: a snapshot is asked for");
        store.save(&one_bridge()).unwrap();
        let add = |f: &[&str]| ConfigChange::AddFlows {
            bridge: "br0".into(),
            flows: f.iter().map(|s| s.to_string()).collect(),
        };
        assert!(store.append(&[add(&["priority=5,ip actions=drop", "priority=6,arp actions=NORMAL"])]).unwrap());
        assert!(store.append(&[add(&["priority=5,ip actions=output:1"])]).unwrap(), "replaces the first");
        let del = ConfigChange::DelFlows { bridge: "br0".into(), flows: vec!["priority=6,arp actions=NORMAL".into()] };
        assert!(store.append(&[del]).unwrap());
        let c = loaded(&path);
        assert_eq!(c.bridges[0].flows, ["priority=5,ip actions=output:1", "priority=0 actions=NORMAL"]);

        // A torn last line (a crash mid-append, never acknowledged) is
        // dropped, and appending goes on after the good part.
        let jpath = format!("{}.journal", path.display());
        let mut f = std::fs::OpenOptions::new().append(true).open(&jpath).unwrap();
        f.write_all(br#"{"op":"del_bridge","na"#).unwrap();
        drop(f);
        let store = Store::new(&path).unwrap();
        let Loaded::Config(c) = store.load().unwrap() else { panic!() };
        assert_eq!(c.bridges.len(), 1);
        assert!(store.append(&[add(&["priority=7,tcp actions=drop"])]).unwrap());
        assert_eq!(loaded(&path).bridges[0].flows.len(), 3);

        // A journal of an older generation (a crash between the snapshot's
        // rename and the new journal's) is already in the snapshot.
        let old_journal = std::fs::read(&jpath).unwrap();
        store.save(&SwitchConfig::default()).unwrap();
        std::fs::write(&jpath, &old_journal).unwrap();
        assert!(loaded(&path).bridges.is_empty());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_previous_configuration() {
        let path = temp("crash");
        let store = Store::new(&path).unwrap();
        store.save(&one_bridge()).unwrap();
        let e = store
            .save_with(&SwitchConfig::default(), || Err(std::io::Error::other("crash")))
            .expect_err("the save fails between write and rename");
        assert!(e.to_string().contains("crash"), "{e}");
        assert_eq!(temporaries(&path), 0, "the temporary file does not linger");
        assert_eq!(loaded(&path).bridges.len(), 1, "the previous configuration is intact");
        // A real crash leaves the temporary file: the next start removes it.
        std::fs::write(format!("{}.tmp-1-0", path.display()), b"{half").unwrap();
        assert_eq!(loaded(&path).bridges.len(), 1);
        assert_eq!(temporaries(&path), 0);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn an_unusable_file_is_reported_untouched_and_set_aside_only_on_purpose() {
        let path = temp("corrupt");
        let store = Store::new(&path).unwrap();
        let truncated = b"{\"version\":1,\"bridges\":[{\"name\":";
        for (text, why) in [
            (&truncated[..], "truncated"),
            (&b"garbage"[..], "not a configuration"),
            (&b"{\"version\":99,\"bridges\":[]}"[..], "newer vswitchd"),
        ] {
            std::fs::write(&path, text).unwrap();
            let Loaded::Unusable { reason } = store.load().unwrap() else { panic!("not reported") };
            assert!(reason.contains(why), "{reason}");
            assert_eq!(std::fs::read(&path).unwrap(), text, "the file is untouched");
        }
        let kept = store.set_aside().unwrap().unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), b"{\"version\":99,\"bridges\":[]}");
        assert!(matches!(store.load().unwrap(), Loaded::Missing));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn every_save_keeps_the_previous_configuration() {
        let path = temp("backup");
        let store = Store::new(&path).unwrap();
        let bridge = |name: &str| ConfigChange::NewBridge { name: name.into(), mac_table: MacTableConfig::default() };
        let mut cfg = SwitchConfig { version: FORMAT_VERSION, generation: 0, bridges: Vec::new(), conntrack: None };
        cfg.replay(&[bridge("one")]).unwrap();
        store.save(&cfg).unwrap();
        store.append(&[bridge("two")]).unwrap();
        cfg.replay(&[bridge("two"), bridge("three")]).unwrap();
        store.save(&cfg).unwrap();
        let Loaded::Config(prev) = Store::new(store.backup_path()).unwrap().load().unwrap() else { panic!() };
        let names: Vec<&str> = prev.bridges.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["one", "two"], "the backup is the configuration before the last save");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
