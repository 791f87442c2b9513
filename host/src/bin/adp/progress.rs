//! Progress on stderr for the command line: bars (indicatif) when stderr is a terminal, sparse
//! plain lines when it is not (logs, CI), nothing with `--quiet`. stdout is never touched, so it
//! stays machine-readable.
use adp_api::requests::Flow;
use adp_host::detect::Stage;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Progress bars on stderr (stderr is a terminal).
    Bars,
    /// A plain line now and then on stderr (stderr is a file or a pipe).
    Lines,
    /// Nothing (`--quiet`); errors are still reported by the caller.
    Quiet,
}

impl Output {
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            Output::Quiet
        } else if std::io::stderr().is_terminal() {
            Output::Bars
        } else {
            Output::Lines
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("progress template")
        .progress_chars("=> ")
}

const BAR: &str = "{prefix:>18} [{bar:32}] {pos}/{len} {msg} ({elapsed}, eta {eta})";

/// A bar over `len` items (images, runs) with `prefix`; hidden unless `output` is
/// [`Output::Bars`]. Print through [`ProgressBar::suspend`] while it is shown.
pub fn item_bar(output: Output, len: u64, prefix: &str) -> ProgressBar {
    if output != Output::Bars {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(style(BAR));
    bar.set_prefix(prefix.to_string());
    bar
}

#[derive(PartialEq)]
enum Kind {
    Learning(String),
    Synthesis,
    Memories,
}

/// Follows the pipeline's [`Stage`]s: one bar per learned concept (steps, loss), one over the
/// pseudo-anomalies, a spinner while the reference memories are built; for `adp eval` also a bar
/// over the runs (category × method × shots × seed).
pub struct StageBars {
    output: Output,
    multi: MultiProgress,
    stage: Option<(Kind, ProgressBar)>,
    runs: Option<Runs>,
}

struct Runs {
    bar: ProgressBar,
    total: usize,
    started: usize,
    tag: Option<String>,
}

impl StageBars {
    /// For one fit.
    pub fn new(output: Output) -> Self {
        let multi = MultiProgress::with_draw_target(if output == Output::Bars {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Self {
            output,
            multi,
            stage: None,
            runs: None,
        }
    }

    /// For `total` runs, each a fit and a scoring, told apart by the tag given to
    /// [`StageBars::observe_run`].
    pub fn with_runs(output: Output, total: usize) -> Self {
        let mut s = Self::new(output);
        let bar = if output == Output::Bars {
            s.multi.add(item_bar(output, total as u64, "runs"))
        } else {
            ProgressBar::hidden()
        };
        s.runs = Some(Runs {
            bar,
            total,
            started: 0,
            tag: None,
        });
        s
    }

    fn end_stage(&mut self) {
        if let Some((_, bar)) = self.stage.take() {
            if self.runs.is_some() {
                bar.finish_and_clear();
            } else {
                bar.finish();
            }
        }
    }

    /// The bar for `kind`, made on first use.
    fn bar(&mut self, kind: Kind, len: Option<u64>) -> &ProgressBar {
        if self.stage.as_ref().is_none_or(|(k, _)| *k != kind) {
            self.end_stage();
            let bar = match &kind {
                Kind::Memories => {
                    let b = ProgressBar::new_spinner().with_style(style("{prefix:>18} {spinner} {msg} ({elapsed})"));
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                }
                _ => ProgressBar::new(len.unwrap_or(0)).with_style(style(BAR)),
            };
            bar.set_prefix(match &kind {
                Kind::Learning(c) => format!("learning {c}"),
                Kind::Synthesis => "pseudo-anomalies".into(),
                Kind::Memories => "memories".into(),
            });
            let bar = self.multi.add(bar);
            self.stage = Some((kind, bar));
        }
        &self.stage.as_ref().expect("just set").1
    }

    /// The observer of one fit.
    pub fn observe(&mut self, stage: &Stage) -> Flow {
        match self.output {
            Output::Quiet => {}
            Output::Lines if self.runs.is_some() => {
                if let (Stage::Memories, Some(tag)) = (stage, self.runs.as_ref().and_then(|r| r.tag.as_ref())) {
                    eprintln!("{tag}: fitted");
                }
            }
            Output::Lines => match stage {
                Stage::Learning { concept, progress: p } if p.step % 50 == 0 || p.step == p.total_steps => {
                    eprintln!(
                        "learning {concept}: step {}/{} loss {:.5}",
                        p.step, p.total_steps, p.loss
                    )
                }
                Stage::Synthesis { done, total } => eprintln!("pseudo-anomalies: {done}/{total}"),
                Stage::Memories => eprintln!("building reference memories"),
                _ => {}
            },
            Output::Bars => match stage {
                Stage::Learning { concept, progress: p } => {
                    let bar = self.bar(Kind::Learning(concept.clone()), Some(p.total_steps));
                    bar.set_length(p.total_steps);
                    bar.set_position(p.step);
                    bar.set_message(format!("loss {:.5}", p.loss));
                }
                Stage::Synthesis { done, total } => {
                    let bar = self.bar(Kind::Synthesis, Some(*total as u64));
                    bar.set_length(*total as u64);
                    bar.set_position(*done as u64);
                }
                Stage::Memories => {
                    self.bar(Kind::Memories, None)
                        .set_message("building reference memories");
                }
            },
        }
        Flow::Continue
    }

    /// The observer of `adp eval`: a new `tag` starts the next run.
    pub fn observe_run(&mut self, tag: &str, stage: &Stage) -> Flow {
        let runs = self.runs.get_or_insert_with(|| Runs {
            bar: ProgressBar::hidden(),
            total: 0,
            started: 0,
            tag: None,
        });
        if runs.tag.as_deref() != Some(tag) {
            runs.bar.set_position(runs.started as u64); // the previous runs are done
            runs.started += 1;
            runs.bar.set_message(tag.to_string());
            runs.tag = Some(tag.to_string());
            if self.output == Output::Lines {
                eprintln!("run {}/{}: {tag}", runs.started, runs.total);
            }
            self.end_stage();
        }
        self.observe(stage)
    }

    /// Ends every bar (the run bar at its total).
    pub fn finish(&mut self) {
        if self.runs.is_some() {
            self.end_stage();
        } else if let Some((_, bar)) = self.stage.take() {
            bar.finish_and_clear();
        }
        if let Some(r) = &self.runs {
            r.bar.set_position(r.started as u64);
            r.bar.finish();
        }
    }
}

impl Drop for StageBars {
    fn drop(&mut self) {
        // An error mid-way: clear the bars so the error message stands alone.
        if let Some((_, bar)) = self.stage.take() {
            bar.finish_and_clear();
        }
        if let Some(r) = &self.runs {
            if !r.bar.is_finished() {
                r.bar.finish_and_clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adp_api::requests::Progress;

    fn learning(step: u64) -> Stage {
        Stage::Learning {
            concept: "c_n".into(),
            progress: Progress {
                step,
                total_steps: 4,
                loss: 0.5,
                diffusion_loss: 0.5,
                clip_normal: 0.0,
                clip_anomaly: 0.0,
            },
        }
    }

    #[test]
    fn every_output_follows_every_stage() {
        for output in [Output::Bars, Output::Lines, Output::Quiet] {
            let mut bars = StageBars::new(output);
            for s in [
                learning(1),
                learning(4),
                Stage::Synthesis { done: 1, total: 2 },
                Stage::Memories,
            ] {
                assert_eq!(bars.observe(&s), Flow::Continue);
            }
            bars.finish();
            let mut runs = StageBars::with_runs(output, 2);
            for tag in ["a", "a", "b"] {
                assert_eq!(runs.observe_run(tag, &Stage::Memories), Flow::Continue);
            }
            assert_eq!(runs.runs.as_ref().unwrap().started, 2);
            runs.finish();
        }
    }

    #[test]
    fn quiet_shows_nothing() {
        assert_eq!(Output::detect(true), Output::Quiet);
        assert!(item_bar(Output::Quiet, 3, "scoring").is_hidden());
        assert!(item_bar(Output::Lines, 3, "scoring").is_hidden());
    }
}
