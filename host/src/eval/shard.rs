//! Splitting an evaluation across processes or machines (SPEC §8): the runs in one fixed order,
//! and the share of them that shard `I/N` does.
use adp_api::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;

/// Where a Kubernetes Indexed Job puts a pod's index; read for `--shard auto/N` only, so a stray
/// variable never splits an evaluation that was not asked to be split.
pub const INDEX_VAR: &str = "JOB_COMPLETION_INDEX";

/// One run of the protocol: what identifies it in a journal, a shard and a merge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    pub category: String,
    pub method: String,
    pub shots: usize,
    pub seed: u64,
}

impl fmt::Display for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} K={} seed={}",
            self.category, self.method, self.shots, self.seed
        )
    }
}

/// Every run, category by category, then method, shots and seed in the order given: the order of
/// the report, and the order shards cut. A value given twice is refused: its runs could not be
/// told apart.
pub fn plan(categories: &[String], methods: &[String], shots: &[usize], seeds: &[u64]) -> Result<Vec<RunKey>> {
    fn once<T: PartialEq + fmt::Debug>(what: &str, v: &[T]) -> Result<()> {
        match v.iter().enumerate().find(|(i, x)| v[..*i].contains(x)) {
            Some((_, x)) => Err(Error::invalid(what, format!("{x:?} is listed twice"))),
            None => Ok(()),
        }
    }
    once("categories", categories)?;
    once("methods", methods)?;
    once("shots", shots)?;
    once("seeds", seeds)?;
    let mut runs = Vec::new();
    for category in categories {
        for method in methods {
            for &k in shots {
                for &seed in seeds {
                    runs.push(RunKey {
                        category: category.clone(),
                        method: method.clone(),
                        shots: k,
                        seed,
                    });
                }
            }
        }
    }
    Ok(runs)
}

/// Shard `index` of `count` (0-based, as Kubernetes, Slurm arrays and Ray number their tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `I/N`, or `auto/N` with I read from `index_var` (the value of [`INDEX_VAR`]).
    pub fn parse(s: &str, index_var: Option<&str>) -> Result<Self> {
        let bad = |m: String| Error::invalid("--shard", m);
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| bad(format!("`{s}` is not I/N or auto/N")))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| bad(format!("`{n}` in `{s}` is not a shard count")))?;
        let (i, from) = match i.trim() {
            "auto" => (
                index_var.ok_or_else(|| bad(format!("`{s}` needs ${INDEX_VAR}, which is not set")))?,
                format!("${INDEX_VAR}"),
            ),
            i => (i, format!("`{s}`")),
        };
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| bad(format!("`{i}` (from {from}) is not a shard index")))?;
        if index >= count {
            return Err(bad(format!(
                "index {index} (from {from}) is not below the count {count} (shards are numbered from 0)"
            )));
        }
        Ok(Self { index, count })
    }

    /// This shard's runs of a plan of `runs`: a contiguous block, the blocks differing by at most
    /// one run. Contiguous rather than round-robin because the plan is ordered by category and
    /// method: a shard then loads the test photos of few categories (once each) and, for
    /// `visual`, extracts their features once per method.
    pub fn range(&self, runs: usize) -> Range<usize> {
        self.index * runs / self.count..(self.index + 1) * runs / self.count
    }

    /// The folder a shard writes in, under the evaluation's `--out`.
    pub fn folder_name(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_explicit_and_auto_indices() {
        assert_eq!(Shard::parse("1/3", None).unwrap(), Shard { index: 1, count: 3 });
        assert_eq!(Shard::parse("auto/3", Some("2")).unwrap(), Shard { index: 2, count: 3 });
        // An explicit index wins over the variable.
        assert_eq!(Shard::parse("0/3", Some("2")).unwrap().index, 0);
        for (s, var, names) in [
            ("auto/3", None, INDEX_VAR),
            ("auto/3", Some("3"), "not below the count 3"),
            ("auto/3", Some("x"), INDEX_VAR),
            ("3/3", None, "not below"),
            ("1/0", None, "not below the count 0"),
            ("1", None, "I/N"),
            ("a/2", None, "`a`"),
        ] {
            let e = Shard::parse(s, var).unwrap_err().to_string();
            assert!(e.contains("--shard") && e.contains(names), "{s}: {e}");
        }
    }

    #[test]
    fn shards_cover_every_run_once_in_order() {
        for runs in [0, 1, 2, 7, 30] {
            for count in 1..=5 {
                let all: Vec<usize> = (0..count)
                    .flat_map(|index| Shard { index, count }.range(runs))
                    .collect();
                assert_eq!(all, (0..runs).collect::<Vec<_>>(), "{runs} runs, {count} shards");
                let sizes: Vec<usize> = (0..count)
                    .map(|index| Shard { index, count }.range(runs).len())
                    .collect();
                assert!(
                    sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                    "{sizes:?}"
                );
            }
        }
    }

    #[test]
    fn plan_orders_by_category_method_shots_seed() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let p = plan(&s(&["a", "b"]), &s(&["adp", "winclip"]), &[1, 2], &[0, 1]).unwrap();
        assert_eq!(p.len(), 16);
        assert_eq!(p[0].to_string(), "a adp K=1 seed=0");
        assert_eq!(p[1].to_string(), "a adp K=1 seed=1");
        assert_eq!(p[2].to_string(), "a adp K=2 seed=0");
        assert_eq!(p[4].to_string(), "a winclip K=1 seed=0");
        assert_eq!(p[8].to_string(), "b adp K=1 seed=0");
        let e = plan(&s(&["a"]), &s(&["adp"]), &[1], &[0, 0]).unwrap_err().to_string();
        assert!(e.contains("seeds") && e.contains("twice"), "{e}");
    }
}
