//! What lets an evaluation survive a kill (SPEC §8): `eval.json`, written before the first run,
//! records everything the runs' numbers depend on; `runs.jsonl` gets each finished run as one
//! line, on disk before the next run starts. A resumed evaluation checks the first and skips what
//! the second holds, so a kill loses at most the run in progress.
use super::provenance::Provenance;
use super::shard::Shard;
use crate::detect::FitOptions;
use adp_api::atomic::write_atomic;
use adp_api::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const SETUP_FILE: &str = "eval.json";
pub const RUNS_FILE: &str = "runs.jsonl";
/// Far above any real journal (a run is a few hundred bytes); a bound on what a bad file costs.
const MAX_FILE_BYTES: u64 = 256 << 20;

/// Everything the runs' numbers depend on (the overlays and the output folder excepted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub provenance: Provenance,
    pub categories: Vec<String>,
    pub methods: Vec<String>,
    pub shots: Vec<usize>,
    pub seeds: Vec<u64>,
    /// Each category's class word, as resolved.
    pub class_words: BTreeMap<String, String>,
    /// What every run's fit starts from (its method, seed and label are the run's own).
    pub fit: FitOptions,
    pub limit: Option<usize>,
    /// The share of the runs this folder holds; none for a whole evaluation.
    pub shard: Option<Shard>,
}

impl Setup {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(SETUP_FILE);
        serde_json::from_slice(&read_bounded(&path)?).map_err(|e| Error::config(&path, e.to_string()))
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::io(dir.join(SETUP_FILE), e))?;
        write_atomic(&dir.join(SETUP_FILE), json.as_bytes())
    }

    /// Where `self` and `other` differ: dotted keys with both values (`fit.steps: 2 ≠ 3`).
    pub fn differences(&self, other: &Self) -> Vec<String> {
        let mut out = Vec::new();
        // Both sides typed first, so that an f32 read back from text compares equal to itself.
        let (a, b) = (serde_json::to_value(self), serde_json::to_value(other));
        if let (Ok(a), Ok(b)) = (a, b) {
            diff(&a, &b, "", &mut out);
        }
        out
    }
}

fn diff(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let key = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                diff(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &key,
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{at}: {a} ≠ {b}")),
        _ => {}
    }
}

/// A file's bytes, refusing one larger than any this module writes.
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::io(path, format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    Ok(bytes)
}

/// The records of a JSON-lines file, and the byte length of its whole lines. Only a line ended
/// by a newline counts: a last line without one was cut by a kill, and is left out with a
/// warning (the run it held is done again). A bad whole line is an error naming it.
pub fn read_lines<T: DeserializeOwned>(path: &Path) -> Result<(Vec<T>, u64)> {
    let bytes = read_bounded(path)?;
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        eprintln!(
            "warning: {}: ignoring its last line, cut short ({} bytes without a newline)",
            path.display(),
            bytes.len() - whole
        );
    }
    let mut records = Vec::new();
    for (n, line) in bytes[..whole].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record = serde_json::from_slice(line).map_err(|e| Error::io(path, format!("line {}: {e}", n + 1)))?;
        records.push(record);
    }
    Ok((records, whole as u64))
}

/// What an evaluation does with the runs an earlier one left in its folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Earlier {
    /// Refuse to start: finished work is never lost by accident.
    #[default]
    Refuse,
    /// Keep them and do only the others; the earlier setup must be this one.
    Resume,
    /// Discard them.
    Overwrite,
}

/// The open `runs.jsonl` of an evaluation.
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Opens `dir`'s journal for `setup` (written to `eval.json`), and returns the runs an earlier
    /// evaluation finished there that `earlier` keeps.
    pub fn open<T: DeserializeOwned>(dir: &Path, setup: &Setup, earlier: Earlier) -> Result<(Self, Vec<T>)> {
        let path = dir.join(RUNS_FILE);
        let (mut runs, mut whole) = match path.exists() {
            true => read_lines(&path)?,
            false => (Vec::new(), 0),
        };
        match earlier {
            Earlier::Refuse if !runs.is_empty() => {
                return Err(Error::io(
                    dir,
                    format!(
                        "holds {} finished runs of an earlier evaluation ({RUNS_FILE}); \
                         pass --resume to continue it or --overwrite to start again",
                        runs.len()
                    ),
                ))
            }
            // A report from before runs.jsonl existed is finished work too.
            Earlier::Refuse | Earlier::Resume if !path.exists() && dir.join("report.json").exists() => {
                return Err(Error::io(
                    dir,
                    format!("holds the report.json of an earlier evaluation, and no {RUNS_FILE} to resume from; pass --overwrite to replace it"),
                ))
            }
            Earlier::Resume if dir.join(SETUP_FILE).exists() => {
                let before = Setup::read(dir)?;
                let changed = before.differences(setup);
                if !changed.is_empty() {
                    return Err(Error::config(
                        dir.join(SETUP_FILE),
                        format!(
                            "the earlier evaluation here had another setup, so it cannot be resumed \
                             (earlier ≠ now): {}; use another --out, or --overwrite",
                            changed.join("; ")
                        ),
                    ));
                }
            }
            Earlier::Resume if !runs.is_empty() => {
                return Err(Error::io(
                    &path,
                    format!("has runs but no {SETUP_FILE} beside it to check them against; --overwrite"),
                ))
            }
            Earlier::Overwrite => {
                (runs, whole) = (Vec::new(), 0);
                for stale in ["report.json", "report.md"] {
                    match std::fs::remove_file(dir.join(stale)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(Error::io(dir.join(stale), e))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        setup.write(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // Drop a line cut short (and, overwriting, everything), so the next run starts a line.
        file.set_len(whole).map_err(|e| Error::io(&path, e))?;
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        let mut journal = Self { file, path };
        journal.seek_end()?;
        Ok((journal, runs))
    }

    fn seek_end(&mut self) -> Result<()> {
        use std::io::Seek;
        self.file
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(())
    }

    /// Appends one finished run, on disk (fsync) before this returns.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record).map_err(|e| Error::io(&self.path, e))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

/// Writes `records` as a whole JSON-lines file, atomically (a merged journal).
pub fn write_lines<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let mut bytes = Vec::new();
    for r in records {
        bytes.extend(serde_json::to_vec(r).map_err(|e| Error::io(path, e))?);
        bytes.push(b'\n');
    }
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        n: u32,
    }

    fn setup() -> Setup {
        Setup {
            provenance: Provenance::default(),
            categories: vec!["tile".into()],
            methods: vec!["adp".into()],
            shots: vec![1],
            seeds: vec![0],
            class_words: BTreeMap::new(),
            fit: FitOptions::default(),
            limit: None,
            shard: None,
        }
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_next_run_starts_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RUNS_FILE);
        setup().write(dir.path()).unwrap();
        std::fs::write(&path, "{\"n\":1}\n{\"n\":2}\n{\"n\":").unwrap();
        let (mut j, runs) = Journal::open::<Rec>(dir.path(), &setup(), Earlier::Resume).unwrap();
        assert_eq!(runs, [Rec { n: 1 }, Rec { n: 2 }]);
        j.append(&Rec { n: 3 }).unwrap();
        let (runs, _) = read_lines::<Rec>(&path).unwrap();
        assert_eq!(runs, [Rec { n: 1 }, Rec { n: 2 }, Rec { n: 3 }]);
    }

    #[test]
    fn earlier_runs_are_refused_resumed_or_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("report.json"), "{}").unwrap();
        let e = Journal::open::<Rec>(dir.path(), &setup(), Earlier::Refuse)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("report.json of an earlier evaluation"), "{e}");
        std::fs::remove_file(dir.path().join("report.json")).unwrap();
        let (mut j, _) = Journal::open::<Rec>(dir.path(), &setup(), Earlier::Refuse).unwrap();
        j.append(&Rec { n: 1 }).unwrap();
        drop(j);
        let e = Journal::open::<Rec>(dir.path(), &setup(), Earlier::Refuse)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("1 finished runs") && e.contains("--resume") && e.contains("--overwrite"),
            "{e}"
        );
        let mut other = setup();
        other.fit.steps = 7;
        other.limit = Some(2);
        let e = Journal::open::<Rec>(dir.path(), &other, Earlier::Resume)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(SETUP_FILE) && e.contains("fit.steps: 3000 ≠ 7") && e.contains("limit: null ≠ 2"),
            "{e}"
        );
        let (_, runs) = Journal::open::<Rec>(dir.path(), &setup(), Earlier::Resume).unwrap();
        assert_eq!(runs, [Rec { n: 1 }]);
        let (_, runs) = Journal::open::<Rec>(dir.path(), &other, Earlier::Overwrite).unwrap();
        assert!(runs.is_empty());
        assert_eq!(read_lines::<Rec>(&dir.path().join(RUNS_FILE)).unwrap().0, []);
        assert_eq!(Setup::read(dir.path()).unwrap(), other);
    }

    #[test]
    fn a_bad_whole_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RUNS_FILE);
        std::fs::write(&path, "{\"n\":1}\nnot json\n{\"n\":2}\n").unwrap();
        let e = read_lines::<Rec>(&path).unwrap_err().to_string();
        assert!(e.contains(RUNS_FILE) && e.contains("line 2"), "{e}");
    }
}
