//! `adp bench`: the `visual` method's two costs per image — backbone patch features and reference
//! association — timed on several backends in the same run and reported as ratios to the first
//! one (the peer), so a comparison never depends on how fast this machine happens to be.
use crate::detect::VisualModel;
use adp_api::requests::FeatureKind;
use adp_api::{BackboneCheckpoint, Backend, Device, Error, ImageBatch, Result};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Timed repetitions per backend (after one untimed warm-up); the median is reported.
    pub repeats: usize,
    pub device: Device,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub plugin: String,
    pub runtime: String,
    pub support: usize,
    pub images: usize,
    pub repeats: usize,
    pub features_ms_per_image: f64,
    pub association_ms_per_image: f64,
    pub ms_per_image: f64,
    /// `ms_per_image` over the first backend's: below 1 is faster than the peer.
    pub ratio: f64,
}

/// Times every backend on the same support set and test images. Repetitions go round the
/// backends in turn, so a slow spell of the machine costs them alike.
pub fn visual(
    backends: &[(String, &dyn Backend)],
    backbone: &BackboneCheckpoint,
    support: &ImageBatch,
    test: &ImageBatch,
    o: BenchOptions,
) -> Result<Vec<BenchRow>> {
    if backends.is_empty() || o.repeats == 0 {
        return Err(Error::invalid(
            "bench",
            format!(
                "needs at least one backend ({}) and one repeat ({})",
                backends.len(),
                o.repeats
            ),
        ));
    }
    if support.is_empty() {
        return Err(Error::EmptySupportSet);
    }
    if test.is_empty() {
        return Err(Error::invalid("bench", "no test images: give more images than --shots"));
    }
    let mut runs = Vec::with_capacity(backends.len());
    for (_, backend) in backends {
        let model = VisualModel::open(*backend, backbone, o.device)?;
        let memory = model
            .scorer
            .build_memory(FeatureKind::PatchTokens, &model.features(support)?)?;
        model.scorer.associate(&memory, &model.features(test)?)?; // warm-up: allocators, caches
        runs.push((model, memory, Vec::new(), Vec::new()));
    }
    for _ in 0..o.repeats {
        for (model, memory, features_ms, association_ms) in &mut runs {
            let t = Instant::now();
            let f = model.features(test)?;
            features_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            model.scorer.associate(memory, &f)?;
            association_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let n = test.len() as f64;
    let mut rows: Vec<BenchRow> = backends
        .iter()
        .zip(runs)
        .map(|((name, backend), (_, _, features_ms, association_ms))| {
            let (f, a) = (median(features_ms) / n, median(association_ms) / n);
            BenchRow {
                plugin: name.clone(),
                runtime: backend.info().runtime,
                support: support.len(),
                images: test.len(),
                repeats: o.repeats,
                features_ms_per_image: f,
                association_ms_per_image: a,
                ms_per_image: f + a,
                ratio: 1.0,
            }
        })
        .collect();
    let peer = rows[0].ms_per_image;
    for r in &mut rows {
        r.ratio = r.ms_per_image / peer;
    }
    Ok(rows)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The rows as a markdown table.
pub fn markdown(rows: &[BenchRow]) -> String {
    let mut out = String::from("| plugin | runtime | features ms/image | association ms/image | total ms/image | ratio to first |\n|---|---|---|---|---|---|\n");
    for r in rows {
        out += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |\n",
            r.plugin, r.runtime, r.features_ms_per_image, r.association_ms_per_image, r.ms_per_image, r.ratio
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
