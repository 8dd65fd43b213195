//! What `check` warns about: a configuration that runs, but is unsafe for a shop in production.
//! Each finding is a warning, not an error: a development setup on a laptop trips some of them on
//! purpose, and `check` still exits 0 for them.
//!
//! - The admin listener on a non-loopback address without `cookie_secure`: the session cookie
//!   would cross the network in clear if the page is ever reached over plain http.
//! - The database on tmpfs (or ramfs): every event answered 200 is lost at the next reboot.
//! - The webhook listener on a public address with the path still at its default: every scanner
//!   on the internet knows `/webhooks/stripe`.
//! - No backups: no Litestream replicating the file (its `.<db>-litestream` directory beside the
//!   database, written to within a day) and no `stripe-inbox backup` within two days (each backup
//!   records when it ran in `<db>.last-backup`).
//!
//! Reads only: the mount table, file times, the backup record.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::with_suffix;
use crate::time;

/// Litestream writes into its directory continuously; older than this, it has stopped.
const LITESTREAM_FRESH: Duration = Duration::from_secs(24 * 3600);
/// A nightly backup that is older than this has stopped running.
const BACKUP_FRESH: Duration = Duration::from_secs(48 * 3600);

/// The warnings for `config`, each one line saying what is wrong and what to do.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let public = |listen: &str| {
        listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| !a.ip().is_loopback())
    };
    if public(&config.admin.listen) && !config.admin.cookie_secure {
        out.push(format!(
            "[admin] listen = {:?} is not loopback and cookie_secure is false: serve the admin \
             over HTTPS through your proxy and set cookie_secure = true",
            config.admin.listen
        ));
    }
    if public(&config.webhook.listen) && config.webhook.path == crate::config::DEFAULT_WEBHOOK_PATH
    {
        out.push(format!(
            "[webhook] listen = {:?} is public and path is still {:?}: pick a path of your own \
             (and tell Stripe), so scanners do not find it",
            config.webhook.listen, config.webhook.path
        ));
    }
    let database = &config.database.path;
    if let Some(fs) = filesystem_of(database).filter(|fs| matches!(fs.as_str(), "tmpfs" | "ramfs"))
    {
        out.push(format!(
            "database {} is on {fs}: it is lost at the next reboot; put [database] path on a disk",
            database.display()
        ));
    }
    if !backed_up(database) {
        out.push(format!(
            "no backups: no Litestream replicating {} and no `stripe-inbox backup` in the last \
             {} hours; see docs/deploy/README.md",
            database.display(),
            BACKUP_FRESH.as_secs() / 3600
        ));
    }
    out
}

/// Records that a backup of `database` was just written to `out` (in `<db>.last-backup`), for
/// [`warnings`]. Best effort: a backup that cannot write the record is still a good backup.
pub fn record_backup(database: &Path, out: &Path) {
    let line = format!("{} {}\n", time::now_ms() / 1000, out.display());
    if let Err(e) = std::fs::write(backup_record(database), line) {
        log::debug!("backup: record {}: {e}", backup_record(database).display());
    }
}

/// When the newest backup recorded for `database` was made, in unix seconds.
pub fn last_backup(database: &Path) -> Result<Option<i64>> {
    let path = backup_record(database);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .split_whitespace()
            .next()
            .and_then(|secs| secs.parse().ok())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

fn backup_record(database: &Path) -> PathBuf {
    with_suffix(database, ".last-backup")
}

/// Litestream replicating within a day, or a backup within two.
fn backed_up(database: &Path) -> bool {
    let fresh = |path: &Path, within: Duration| {
        newest_mtime(path).is_some_and(|t| {
            SystemTime::now()
                .duration_since(t)
                .is_ok_and(|age| age < within)
        })
    };
    let litestream = litestream_dir(database);
    if fresh(&litestream, LITESTREAM_FRESH) {
        return true;
    }
    let now = time::now_ms() / 1000;
    matches!(last_backup(database), Ok(Some(at)) if now - at < BACKUP_FRESH.as_secs() as i64)
}

/// Where Litestream keeps its state for `database`: `.<name>-litestream` beside it.
pub fn litestream_dir(database: &Path) -> PathBuf {
    let name = database
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    database.with_file_name(format!(".{name}-litestream"))
}

/// The newest modification time of `path` or of anything up to two levels below it.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    fn walk(path: &Path, depth: u32, newest: &mut Option<SystemTime>) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if let Ok(t) = meta.modified() {
            *newest = (*newest).max(Some(t));
        }
        if meta.is_dir() && depth > 0 {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&entry.path(), depth - 1, newest);
            }
        }
    }
    let mut newest = None;
    walk(path, 2, &mut newest);
    newest
}

/// The type of the file system that holds `path` (`ext4`, `tmpfs`...), from the mount table: the
/// mount point that is the longest prefix of the path's real directory.
fn filesystem_of(path: &Path) -> Option<String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    let dir = dir.canonicalize().ok()?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    best_mount(&table, &dir)
}

/// The file system type of the mount in `mountinfo` whose mount point is the longest prefix of
/// `dir`. A line reads `id parent major:minor root mount-point options ... - type source ...`.
fn best_mount(mountinfo: &str, dir: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(point), Some(dash)) = (fields.get(4), fields.iter().position(|f| *f == "-"))
        else {
            continue;
        };
        let Some(fstype) = fields.get(dash + 1) else {
            continue;
        };
        // Spaces and the like in mount points are written as octal escapes.
        let point = point.replace("\\040", " ");
        if dir.starts_with(&point) && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), fstype.to_string()));
        }
    }
    best.map(|(_, fstype)| fstype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TempDir;

    const MOUNTS: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684084k
31 27 0:30 / /var/lib/my\\040data rw - xfs /dev/vdb rw
";

    #[test]
    fn the_longest_mount_point_wins() {
        let fs = |p: &str| best_mount(MOUNTS, Path::new(p));
        assert_eq!(fs("/var/lib/stripe-inbox").as_deref(), Some("ext4"));
        assert_eq!(fs("/dev/shm/x").as_deref(), Some("tmpfs"));
        assert_eq!(
            fs("/dev/shmx").as_deref(),
            Some("ext4"),
            "a prefix of a name is not a mount"
        );
        assert_eq!(fs("/var/lib/my data/db").as_deref(), Some("xfs"));
    }

    fn config(dir: &Path, extra: &str) -> Config {
        let text = format!(
            "[database]\npath = \"{}\"\n{extra}",
            dir.join("inbox.db").display()
        );
        Config::parse(&text, &dir.join("c.toml")).unwrap()
    }

    #[test]
    fn a_public_admin_without_secure_cookies_and_a_public_default_path_are_warned() {
        let dir = TempDir::new("audit-listen");
        let safe = config(dir.path(), "");
        let risky = config(
            dir.path(),
            "[webhook]\nlisten = \"0.0.0.0:8080\"\n[admin]\nlisten = \"0.0.0.0:8081\"\n",
        );
        let secured = config(
            dir.path(),
            "[webhook]\nlisten = \"0.0.0.0:8080\"\npath = \"/hooks/s-1f9e\"\n[admin]\nlisten = \
             \"0.0.0.0:8081\"\ncookie_secure = true\n",
        );
        let has = |c: &Config, needle: &str| warnings(c).iter().any(|w| w.contains(needle));
        assert!(!has(&safe, "cookie_secure") && !has(&safe, "scanners"));
        assert!(has(&risky, "cookie_secure") && has(&risky, "scanners"));
        assert!(!has(&secured, "cookie_secure") && !has(&secured, "scanners"));
    }

    #[test]
    fn backups_count_when_litestream_or_a_recent_backup_is_seen() {
        let dir = TempDir::new("audit-backups");
        let c = config(dir.path(), "");
        let db = &c.database.path;
        let no_backups = |c: &Config| warnings(c).iter().any(|w| w.starts_with("no backups"));
        assert!(no_backups(&c));
        record_backup(db, &dir.path().join("copy.db"));
        assert!(last_backup(db).unwrap().is_some());
        assert!(!no_backups(&c), "a backup just now");
        std::fs::write(
            with_suffix(db, ".last-backup"),
            format!("{} old.db\n", time::now_ms() / 1000 - 3 * 86_400),
        )
        .unwrap();
        assert!(no_backups(&c), "a backup three days old has stopped");
        std::fs::create_dir_all(litestream_dir(db).join("ltx/0")).unwrap();
        assert!(!no_backups(&c), "Litestream's directory, just written");
    }
}
