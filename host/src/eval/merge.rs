//! `adp report merge`: shard folders joined into the report an unsharded evaluation gives
//! (SPEC §8): the same runs in the same order, the same report.md. Shards of another setup, a
//! run in two shards, or a run in none are refused, naming them.
use super::journal::{read_lines, write_lines, Setup, RUNS_FILE, SETUP_FILE};
use super::shard::{plan, Shard};
use super::{write_report, EvalOptions, Report, Run};
use adp_api::atomic::write_atomic;
use adp_api::{Error, Result};
use std::path::{Path, PathBuf};

/// How many missing runs an error lists by name.
const NAMED: usize = 8;

/// Joins the evaluations in `shards` (folders holding eval.json and runs.jsonl) into `out`:
/// eval.json (without a shard), runs.jsonl, report.json, report.md and the shards' overlays.
pub fn merge(out: &Path, shards: &[PathBuf]) -> Result<Report> {
    let Some(first) = shards.first() else {
        return Err(Error::invalid("shards", "no shard folder given"));
    };
    for dir in shards {
        if same_folder(dir, out) {
            return Err(Error::io(
                out,
                "is also one of the shard folders; merge into another folder",
            ));
        }
    }
    for dir in shards {
        if !dir.join(SETUP_FILE).is_file() {
            return Err(Error::io(
                dir,
                format!("no {SETUP_FILE}: not a folder `adp eval` wrote"),
            ));
        }
    }
    let setups = shards.iter().map(|d| Setup::read(d)).collect::<Result<Vec<_>>>()?;
    let whole = Setup {
        shard: None,
        ..setups[0].clone()
    };
    for (dir, s) in shards.iter().zip(&setups).skip(1) {
        let changed = whole.differences(&Setup {
            shard: None,
            ..s.clone()
        });
        if !changed.is_empty() {
            return Err(Error::config(
                dir.join(SETUP_FILE),
                format!(
                    "another setup than {} ({} ≠ this): {}",
                    first.join(SETUP_FILE).display(),
                    first.display(),
                    changed.join("; ")
                ),
            ));
        }
    }
    let plan = plan(&whole.categories, &whole.methods, &whole.shots, &whole.seeds)?;
    let mut found: Vec<Option<(Run, &PathBuf)>> = vec![None; plan.len()];
    for dir in shards {
        let path = dir.join(RUNS_FILE);
        for run in read_lines::<Run>(&path)?.0 {
            let key = run.key();
            let Some(i) = plan.iter().position(|k| *k == key) else {
                return Err(Error::io(
                    &path,
                    format!("run {key} is not one of the evaluation's runs"),
                ));
            };
            if let Some((_, other)) = &found[i] {
                return Err(Error::invalid(
                    "shards",
                    format!("run {key} is in both {} and {}", other.display(), dir.display()),
                ));
            }
            found[i] = Some((run, dir));
        }
    }
    let count = setups.iter().find_map(|s| s.shard).map(|s| s.count);
    let missing: Vec<String> = (0..plan.len())
        .filter(|&i| found[i].is_none())
        .map(|i| {
            match count
                .and_then(|count| (0..count).find(|&index| Shard { index, count }.range(plan.len()).contains(&i)))
            {
                Some(index) => format!("{} (shard {index}/{})", plan[i], count.unwrap_or(0)),
                None => plan[i].to_string(),
            }
        })
        .collect();
    if !missing.is_empty() {
        return Err(Error::invalid(
            "shards",
            format!(
                "{} of the {} runs are in none of the folders given (a shard not given or not finished): {}{}",
                missing.len(),
                plan.len(),
                missing[..missing.len().min(NAMED)].join(", "),
                if missing.len() > NAMED { ", …" } else { "" }
            ),
        ));
    }
    let report = Report {
        provenance: whole.provenance.clone(),
        runs: found.into_iter().flatten().map(|(r, _)| r).collect(),
    };
    let options = EvalOptions {
        data: whole.provenance.data.clone(),
        categories: whole.categories.clone(),
        shots: whole.shots.clone(),
        seeds: whole.seeds.clone(),
        methods: whole.methods.iter().map(|m| m.parse()).collect::<Result<_>>()?,
        fit: whole.fit.clone(),
        labels: Vec::new(),
        limit: whole.limit,
        overlays: 0,
        out: out.to_path_buf(),
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    whole.write(out)?;
    write_lines(&out.join(RUNS_FILE), &report.runs)?;
    write_report(&report, &options)?;
    for dir in shards {
        copy_tree(&dir.join("overlays"), &out.join("overlays"))?;
    }
    Ok(report)
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Copies the files under `from` (if it exists) into `to`, keeping their relative paths.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let path = entry.map_err(|e| Error::io(from, e))?.path();
        let target = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else if path.is_file() {
            write_atomic(&target, &std::fs::read(&path).map_err(|e| Error::io(&path, e))?)?;
        }
    }
    Ok(())
}
