//! The banned file (`banned.bootstrap_file`): bans an operator keeps in a CSV file, read at
//! start and again when asked (SIGHUP, `POST /api/v5/reload`) or when the file changes. Its
//! bans replace those it held before; bans made through the admin API stay. Connected
//! clients a new reading names are kicked out, as after a ban made through the API.
//!
//! The file has a header line naming its columns, EMQX's names for a ban's fields: `as`
//! (`clientid`, `username`, `peerhost`, `peerhost_net`) and `who`, and optionally `reason`,
//! `by`, `at` and `until` (RFC 3339); lines starting with `#` are left out. Read with the
//! `csv` crate, a ban's fields then checked as the admin API checks them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use mqtt_core::banned::Ban;
use mqtt_core::broker::Broker;

use super::api::{ban_of, BanView};

/// What a ban without a `by` column says made it.
const BY_FILE: &str = "banned.bootstrap_file";

#[derive(Debug, thiserror::Error)]
pub enum BannedFileError {
    #[error("{path}: cannot read: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: String,
        line: u64,
        reason: String,
    },
    #[error("{path}: {source}")]
    Full {
        path: String,
        #[source]
        source: mqtt_core::banned::BanError,
    },
}

/// The bans `path` holds, checked; the first line at fault otherwise.
pub fn read(path: &Path, now: SystemTime) -> Result<Vec<Ban>, BannedFileError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| BannedFileError::Unreadable {
        path: shown.clone(),
        source,
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(std::io::BufReader::new(file));
    let at_fault = |line: u64, reason: String| BannedFileError::Line {
        path: shown.clone(),
        line,
        reason,
    };
    let unreadable = |error: csv::Error| {
        let line = error.position().map_or(0, csv::Position::line);
        match error.into_kind() {
            csv::ErrorKind::Io(source) => BannedFileError::Unreadable {
                path: shown.clone(),
                source,
            },
            csv::ErrorKind::Utf8 { .. } => at_fault(line, "not UTF-8".to_owned()),
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => at_fault(
                line,
                format!("{len} fields where the header names {expected_len}"),
            ),
            other => at_fault(line, format!("{other:?}")),
        }
    };
    let headers = reader.headers().map_err(unreadable)?.clone();
    let mut record = csv::StringRecord::new();
    let mut bans = Vec::new();
    while reader.read_record(&mut record).map_err(unreadable)? {
        let line = record.position().map_or(0, csv::Position::line);
        let view: BanView = record
            .deserialize(Some(&headers))
            .map_err(|error| at_fault(line, error.to_string()))?;
        let mut ban = ban_of(&view, now).map_err(|reason| at_fault(line, reason))?;
        if view.by.is_none() {
            BY_FILE.clone_into(&mut ban.by);
        }
        bans.push(ban);
    }
    Ok(bans)
}

/// The banned file of a running gateway, read again on demand.
pub struct BannedFile {
    path: PathBuf,
    broker: Arc<Broker>,
}

impl BannedFile {
    /// Reads `path` and puts its bans in force: what start-up does, and fails as it fails.
    pub fn load(path: &Path, broker: Arc<Broker>) -> Result<BannedFile, BannedFileError> {
        let banned = BannedFile {
            path: path.to_owned(),
            broker,
        };
        banned.put_in_force()?;
        Ok(banned)
    }

    fn put_in_force(&self) -> Result<usize, BannedFileError> {
        let now = SystemTime::now();
        let bans = read(&self.path, now)?;
        let count = bans.len();
        self.broker
            .banned
            .replace_file_bans(bans, now)
            .map_err(|source| BannedFileError::Full {
                path: self.path.display().to_string(),
                source,
            })?;
        let kicked = self.broker.kick_banned(now, Instant::now());
        tracing::info!(file = %self.path.display(), bans = count, kicked, "banned file read");
        Ok(count)
    }
}

impl adapter_kit::Reload for BannedFile {
    fn reload(&self) -> Result<(), String> {
        self.put_in_force()
            .map(drop)
            .map_err(|error| error.to_string())
    }

    fn watched_files(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    fn what(&self) -> &'static str {
        "banned list"
    }
}

#[cfg(test)]
mod tests {
    use mqtt_core::banned::BanTarget;

    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("a temp file");
        std::fs::write(file.path(), text).expect("write the banned file");
        file
    }

    #[test]
    fn a_file_names_its_columns_and_leaves_out_what_it_does_not_say() {
        let written = file(
            "as,who,reason,by,at,until\n\
             # lost in the field\n\
             clientid,dev-1,stolen,ops,,\n\
             username, mallory ,,,,2999-01-01T00:00:00Z\n\
             peerhost_net,192.0.2.0/24,\"a network, quoted\",,,\n",
        );
        let bans = read(written.path(), SystemTime::now()).expect("read");
        let targets: Vec<&BanTarget> = bans.iter().map(|ban| &ban.target).collect();
        assert_eq!(
            targets,
            [
                &BanTarget::ClientId("dev-1".into()),
                &BanTarget::Username("mallory".into()),
                &BanTarget::PeerNet {
                    network: "192.0.2.0".parse().unwrap(),
                    prefix: 24
                },
            ]
        );
        assert_eq!(bans[0].by, "ops");
        assert_eq!(bans[1].by, BY_FILE);
        assert!(bans[1].until.is_some() && bans[0].until.is_none());
        assert_eq!(bans[2].reason, "a network, quoted");
        // Only the columns it needs.
        let short = file("who,as\nd,clientid\n");
        assert_eq!(read(short.path(), SystemTime::now()).unwrap().len(), 1);
    }

    #[test]
    fn the_first_line_at_fault_is_named() {
        for (text, line, says) in [
            (
                "as,who\nclientid,a\npeerhost,localhost\n",
                3,
                "not an IP address",
            ),
            ("as,who\nclientid_re,a\n", 2, "clientid_re"),
            ("as,who,colour\nclientid,a,red\n", 2, "colour"),
            ("as,who\nclientid,a,extra\n", 2, "3 fields"),
            ("as,who\nclientid,\n", 2, "empty"),
            ("as,who,until\nclientid,a,tomorrow\n", 2, "RFC 3339"),
        ] {
            let written = file(text);
            match read(written.path(), SystemTime::now()) {
                Err(BannedFileError::Line {
                    line: at, reason, ..
                }) => {
                    assert_eq!(at, line, "{text:?}: {reason}");
                    assert!(reason.contains(says), "{text:?}: {reason}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(
            read(Path::new("/nonexistent/banned.csv"), SystemTime::now()),
            Err(BannedFileError::Unreadable { .. })
        ));
    }
}
