//! Evaluation datasets (SPEC §8): the MVTec-AD folder layout and VisA's `split_csv/1cls.csv`,
//! K-shot draws, and ground-truth masks.
//!
//! MVTec-AD layout (also used by the prepared magnetic_tile and MPDD copies):
//!
//! ```text
//! <root>/<category>/train/good/*.png
//! <root>/<category>/test/good/*.png            normal test images
//! <root>/<category>/test/<defect>/*.png        anomalous test images
//! <root>/<category>/ground_truth/<defect>/<stem>_mask.png   (optional)
//! ```
//!
//! Masks are optional per defect: a defect folder without a `ground_truth/<defect>/` folder has no
//! masks (`Sample::mask` is `None`); where that folder exists, every image of the defect must have
//! its mask (`<stem>_mask.png`, or `<stem>.png` as some MVTec-style sets name it), otherwise
//! loading fails naming the missing file.
//!
//! VisA: `<root>/split_csv/1cls.csv` with the columns `object,split,label,image,mask`, paths
//! relative to `<root>`, split `train`/`test`, label `normal`/`anomaly`. Anomalous VisA samples
//! get the defect name `anomaly` (VisA's split does not name defect types), normal ones `good`.
//!
//! Masks: any non-zero pixel is defective ([`read_mask`]); VisA stores small label values (1, 2, …)
//! rather than MVTec's 255.
//!
//! Class words (SPEC §6/§7): a category's word is its folder name with `_` read as a space
//! ([`class_word`]); [`class_words`] applies `adp eval`'s `--label` overrides.
use adp_api::rng::SplitMix64;
use adp_api::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One test image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    /// `false` for `test/good` (label 0), `true` for every defect folder (label 1).
    pub anomalous: bool,
    /// The defect folder name (`good` for normal samples).
    pub defect: String,
    /// The pixel mask, where the dataset has one.
    pub mask: Option<PathBuf>,
}

/// One category (product) of a dataset: the normal training pool and the test split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    pub name: String,
    /// Sorted by path.
    pub train_good: Vec<PathBuf>,
    /// Sorted by path (for MVTec: by defect folder, then file name).
    pub test: Vec<Sample>,
}

/// Path of VisA's split file below a dataset root.
pub const VISA_SPLIT: &str = "split_csv/1cls.csv";

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn is_visa(root: &Path) -> bool {
    root.join(VISA_SPLIT).is_file()
}

fn check_root(root: &Path) -> Result<()> {
    if !root.is_dir() {
        return Err(Error::io(root, "dataset root not found (or not a folder)"));
    }
    Ok(())
}

/// Loads `category` from `root`: VisA when `<root>/split_csv/1cls.csv` exists, otherwise the
/// MVTec-AD folder layout.
pub fn load(root: &Path, category: &str) -> Result<Category> {
    check_root(root)?;
    if is_visa(root) {
        load_visa(root, category)
    } else {
        load_mvtec(root, category)
    }
}

/// The categories under `root`, sorted: VisA's objects named in its split file, or for the
/// MVTec layout the sub-folders holding a `train/` or `test/` folder.
pub fn categories(root: &Path) -> Result<Vec<String>> {
    check_root(root)?;
    if is_visa(root) {
        let rows = read_visa_csv(root)?;
        let set: BTreeSet<String> = rows.into_iter().map(|r| r.object).collect();
        return Ok(set.into_iter().collect());
    }
    let mut out = Vec::new();
    for dir in sorted_dirs(root)? {
        if dir.join("train").is_dir() || dir.join("test").is_dir() {
            if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
                out.push(name.to_string());
            }
        }
    }
    Ok(out)
}

fn missing_category(root: &Path, category: &str) -> Error {
    let found = match categories(root) {
        Ok(c) if c.is_empty() => "none".to_string(),
        Ok(c) => c.join(", "),
        Err(e) => format!("could not list them: {e}"),
    };
    Error::io(
        root.join(category),
        format!("category `{category}` not found; categories here: {found}"),
    )
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_dir_sorted(dir)?.into_iter().filter(|p| p.is_dir()).collect())
}

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn sorted_images(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_dir_sorted(dir)?.into_iter().filter(|p| is_image(p)).collect())
}

/// Loads one category in the MVTec-AD folder layout (see the module documentation).
pub fn load_mvtec(root: &Path, category: &str) -> Result<Category> {
    check_root(root)?;
    let cat_dir = root.join(category);
    if category.is_empty() || !cat_dir.is_dir() {
        return Err(missing_category(root, category));
    }
    let train_dir = cat_dir.join("train").join("good");
    if !train_dir.is_dir() {
        return Err(Error::io(&train_dir, "training folder train/good not found"));
    }
    let train_good = sorted_images(&train_dir)?;
    if train_good.is_empty() {
        return Err(Error::io(&train_dir, "no images (.png/.jpg) in train/good"));
    }
    let test_dir = cat_dir.join("test");
    if !test_dir.is_dir() {
        return Err(Error::io(&test_dir, "test folder not found"));
    }
    let gt_dir = cat_dir.join("ground_truth");
    let mut test = Vec::new();
    for defect_dir in sorted_dirs(&test_dir)? {
        let Some(defect) = defect_dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            return Err(Error::io(&defect_dir, "folder name is not valid UTF-8"));
        };
        let anomalous = defect != "good";
        let mask_dir = gt_dir.join(&defect);
        let has_masks = anomalous && mask_dir.is_dir();
        for path in sorted_images(&defect_dir)? {
            let mask = if has_masks {
                Some(find_mask(&mask_dir, &path)?)
            } else {
                None
            };
            test.push(Sample {
                path,
                anomalous,
                defect: defect.clone(),
                mask,
            });
        }
    }
    if test.is_empty() {
        return Err(Error::io(
            &test_dir,
            "no test images (.png/.jpg) in any test/<good|defect> folder",
        ));
    }
    Ok(Category {
        name: category.to_string(),
        train_good,
        test,
    })
}

/// `<mask_dir>/<stem>_mask.png`, else `<mask_dir>/<stem>.png`; an error naming the first.
fn find_mask(mask_dir: &Path, image: &Path) -> Result<PathBuf> {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let primary = mask_dir.join(format!("{stem}_mask.png"));
    if primary.is_file() {
        return Ok(primary);
    }
    let alt = mask_dir.join(format!("{stem}.png"));
    if alt.is_file() {
        return Ok(alt);
    }
    Err(Error::io(
        &primary,
        format!(
            "mask for test image {} not found (the folder {} holds this defect's masks)",
            image.display(),
            mask_dir.display()
        ),
    ))
}

struct VisaRow {
    line: usize,
    object: String,
    split: String,
    anomalous: bool,
    image: String,
    mask: String,
}

fn read_visa_csv(root: &Path) -> Result<Vec<VisaRow>> {
    let file = root.join(VISA_SPLIT);
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    let mut lines = text.lines().enumerate();
    let header = match lines.next() {
        Some((_, h)) => h.trim_start_matches('\u{feff}'),
        None => {
            return Err(Error::config(
                &file,
                "empty file; expected a header object,split,label,image,mask",
            ))
        }
    };
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| -> Result<usize> {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| Error::config(&file, format!("header lacks column `{name}` (has: {})", cols.join(","))))
    };
    let (c_obj, c_split, c_label, c_img, c_mask) = (
        col("object")?,
        col("split")?,
        col("label")?,
        col("image")?,
        col("mask")?,
    );
    let mut rows = Vec::new();
    for (i, line) in lines {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != cols.len() {
            return Err(Error::config(
                &file,
                format!("line {line_no}: {} fields, the header has {}", f.len(), cols.len()),
            ));
        }
        let anomalous = match f[c_label] {
            "normal" => false,
            "anomaly" => true,
            other => {
                return Err(Error::config(
                    &file,
                    format!("line {line_no}: label `{other}`, expected normal or anomaly"),
                ))
            }
        };
        let split = f[c_split];
        if split != "train" && split != "test" {
            return Err(Error::config(
                &file,
                format!("line {line_no}: split `{split}`, expected train or test"),
            ));
        }
        if f[c_img].is_empty() {
            return Err(Error::config(&file, format!("line {line_no}: empty image path")));
        }
        rows.push(VisaRow {
            line: line_no,
            object: f[c_obj].to_string(),
            split: split.to_string(),
            anomalous,
            image: f[c_img].to_string(),
            mask: f[c_mask].to_string(),
        });
    }
    Ok(rows)
}

/// Loads one VisA category through `<root>/split_csv/1cls.csv`. Training images are the
/// `train`/`normal` rows; every referenced image and mask of the category must exist.
pub fn load_visa(root: &Path, category: &str) -> Result<Category> {
    check_root(root)?;
    let file = root.join(VISA_SPLIT);
    if !file.is_file() {
        return Err(Error::io(&file, "VisA split file not found"));
    }
    let rows = read_visa_csv(root)?;
    if !rows.iter().any(|r| r.object == category) {
        let found: BTreeSet<&str> = rows.iter().map(|r| r.object.as_str()).collect();
        let found: Vec<&str> = found.into_iter().collect();
        return Err(Error::config(
            &file,
            format!(
                "category `{category}` not found; categories here: {}",
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(", ")
                }
            ),
        ));
    }
    let mut train_good = Vec::new();
    let mut test = Vec::new();
    for r in rows.iter().filter(|r| r.object == category) {
        let path = root.join(&r.image);
        if !path.is_file() {
            return Err(Error::io(
                &path,
                format!("image referenced by {} line {} not found", file.display(), r.line),
            ));
        }
        if r.split == "train" {
            if !r.anomalous {
                train_good.push(path);
            }
            continue;
        }
        let mask = if r.mask.is_empty() {
            None
        } else {
            let m = root.join(&r.mask);
            if !m.is_file() {
                return Err(Error::io(
                    &m,
                    format!("mask referenced by {} line {} not found", file.display(), r.line),
                ));
            }
            Some(m)
        };
        let defect = if r.anomalous { "anomaly" } else { "good" }.to_string();
        test.push(Sample {
            path,
            anomalous: r.anomalous,
            defect,
            mask,
        });
    }
    if train_good.is_empty() {
        return Err(Error::config(
            &file,
            format!("category `{category}` has no train/normal images"),
        ));
    }
    if test.is_empty() {
        return Err(Error::config(
            &file,
            format!("category `{category}` has no test images"),
        ));
    }
    train_good.sort();
    test.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Category {
        name: category.to_string(),
        train_good,
        test,
    })
}

/// The class word of a category (SPEC §6/§7): its folder name with `_` read as a space, e.g.
/// `metal_plate` → `metal plate`. The word `winclip` and `adp-label` put into their prompts.
pub fn class_word(category: &str) -> String {
    category.replace('_', " ")
}

/// The class word of every category in `categories`, from `labels` (the `--label` values of
/// `adp eval`): `CATEGORY=WORD` sets one category's word; a bare `WORD` is accepted only when a
/// single category is evaluated (with several it would give them all one wrong word, so it is
/// refused); every other category gets [`class_word`]. Refused as well: a category not among
/// `categories`, one set twice, an empty word.
pub fn class_words(labels: &[String], categories: &[String]) -> Result<BTreeMap<String, String>> {
    let mut set: BTreeMap<String, String> = BTreeMap::new();
    for label in labels {
        let (category, word) = match label.split_once('=') {
            Some((c, w)) => (c.trim().to_string(), w.trim()),
            None => match categories {
                [only] => (only.clone(), label.trim()),
                _ => {
                    return Err(Error::invalid(
                        "--label",
                        format!(
                            "`{label}` has no category, and {} categories are evaluated ({}): give \
                             --label CATEGORY=WORD for each category whose word is not its folder \
                             name with `_` read as a space",
                            categories.len(),
                            categories.join(", ")
                        ),
                    ))
                }
            },
        };
        if !categories.contains(&category) {
            return Err(Error::invalid(
                "--label",
                format!(
                    "`{label}`: category `{category}` is not evaluated (categories: {})",
                    categories.join(", ")
                ),
            ));
        }
        if word.is_empty() {
            return Err(Error::invalid("--label", format!("`{label}`: the word is empty")));
        }
        if let Some(first) = set.insert(category.clone(), word.to_string()) {
            return Err(Error::invalid(
                "--label",
                format!("category `{category}` is given two words (`{first}` and `{word}`)"),
            ));
        }
    }
    for c in categories {
        set.entry(c.clone()).or_insert_with(|| class_word(c));
    }
    Ok(set)
}

/// `k` distinct images of `train`, drawn reproducibly from `seed` (partial Fisher–Yates over
/// `SplitMix64(seed)`): the same seed and list give the same shots, in draw order.
pub fn draw_shots(train: &[PathBuf], k: usize, seed: u64) -> Result<Vec<PathBuf>> {
    let n = train.len();
    if k == 0 || k > n {
        return Err(Error::invalid(
            "shot count",
            format!("asked for k = {k} shots from {n} training images; need 1 ≤ k ≤ {n}"),
        ));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64(seed);
    for i in 0..k {
        let j = i + rng.below((n - i) as u64) as usize;
        idx.swap(i, j);
    }
    Ok(idx[..k].iter().map(|&i| train[i].clone()).collect())
}

/// The mask at `path` as `width × height` booleans, row-major: `true` (defective) where the pixel
/// is non-zero, one rule for every dataset (VisA stores small label values such as 1 and 2, MVTec
/// 255); resized with nearest neighbour when its size differs, so no grey edges appear.
pub fn read_mask(path: &Path, width: u32, height: u32) -> Result<Vec<bool>> {
    if width == 0 || height == 0 {
        return Err(Error::invalid(
            "mask size",
            format!("{}: requested size {width}×{height} has no pixels", path.display()),
        ));
    }
    let img = image::open(path).map_err(|e| Error::io(path, format!("cannot read mask: {e}")))?;
    let luma = img.to_luma8();
    let (sw, sh) = luma.dimensions();
    if sw == 0 || sh == 0 {
        return Err(Error::io(path, "mask image has no pixels"));
    }
    let raw = luma.as_raw();
    if (sw, sh) == (width, height) {
        return Ok(raw.iter().map(|&v| v > 0).collect());
    }
    // Nearest neighbour on pixel centres: source index floor((x + ½) · sw / w).
    let xs: Vec<usize> = (0..width as u64)
        .map(|x| ((2 * x + 1) * sw as u64 / (2 * width as u64)) as usize)
        .collect();
    let mut out = Vec::with_capacity(width as usize * height as usize);
    for y in 0..height as u64 {
        let sy = ((2 * y + 1) * sh as u64 / (2 * height as u64)) as usize;
        let row = &raw[sy * sw as usize..(sy + 1) * sw as usize];
        out.extend(xs.iter().map(|&sx| row[sx] > 0));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Asserts that the error text `e` contains every one of `parts`.
    fn assert_mentions(e: &str, parts: &[&str]) {
        for part in parts {
            assert!(e.contains(part), "{part:?} not in: {e}");
        }
    }

    fn touch(p: &Path) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"").unwrap();
    }

    fn write_mask(p: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> bool) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([if f(x, y) { 255 } else { 0 }]));
        img.save(p).unwrap();
    }

    /// A small MVTec-style tree: widget with masks for `crack`, none for `dent`.
    fn mvtec_tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("widget");
        for n in ["002.png", "000.png", "001.png"] {
            touch(&c.join("train/good").join(n));
        }
        touch(&c.join("train/good/.hidden.png"));
        touch(&c.join("train/good/notes.txt"));
        touch(&c.join("test/good/000.png"));
        touch(&c.join("test/good/001.png"));
        touch(&c.join("test/crack/000.png"));
        touch(&c.join("test/crack/001.png"));
        touch(&c.join("test/dent/000.png"));
        write_mask(&c.join("ground_truth/crack/000_mask.png"), 4, 4, |x, _| x < 2);
        write_mask(&c.join("ground_truth/crack/001.png"), 4, 4, |_, _| true);
        fs::create_dir_all(d.path().join("other/test")).unwrap();
        fs::create_dir_all(d.path().join("not_a_category")).unwrap();
        d
    }

    #[test]
    fn mvtec_layout() {
        let d = mvtec_tree();
        let root = d.path();
        assert_eq!(categories(root).unwrap(), vec!["other", "widget"]);
        let c = load(root, "widget").unwrap();
        assert_eq!(c, load_mvtec(root, "widget").unwrap());
        assert_eq!(c.name, "widget");
        let names: Vec<_> = c.train_good.iter().map(|p| p.file_name().unwrap().to_owned()).collect();
        assert_eq!(names, ["000.png", "001.png", "002.png"]);
        let t: Vec<(String, bool, bool)> = c
            .test
            .iter()
            .map(|s| {
                let rel = s.path.strip_prefix(root.join("widget/test")).unwrap();
                (rel.to_string_lossy().into_owned(), s.anomalous, s.mask.is_some())
            })
            .collect();
        let want = [
            ("crack/000.png", true, true),
            ("crack/001.png", true, true),
            ("dent/000.png", true, false),
            ("good/000.png", false, false),
            ("good/001.png", false, false),
        ];
        let want: Vec<_> = want.iter().map(|(p, a, m)| (p.to_string(), *a, *m)).collect();
        assert_eq!(t, want);
        assert_eq!(c.test[0].defect, "crack");
        assert_eq!(c.test[4].defect, "good");
        assert_eq!(
            c.test[0].mask.as_ref().unwrap(),
            &root.join("widget/ground_truth/crack/000_mask.png")
        );
        assert_eq!(
            c.test[1].mask.as_ref().unwrap(),
            &root.join("widget/ground_truth/crack/001.png")
        );
    }

    #[test]
    fn mvtec_errors() {
        let d = mvtec_tree();
        let root = d.path();
        let e = load(&root.join("nope"), "widget").unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("root not found"), "{e}");
        assert!(categories(&root.join("nope")).is_err());
        let e = load(root, "gadget").unwrap_err().to_string();
        assert!(e.contains("gadget") && e.contains("other, widget"), "{e}");

        let widget_fails = |parts: &[&str]| assert_mentions(&load(root, "widget").unwrap_err().to_string(), parts);

        // Mask folder present, one mask missing.
        fs::remove_file(root.join("widget/ground_truth/crack/001.png")).unwrap();
        widget_fails(&["001_mask.png", "test/crack/001.png"]);
        write_mask(&root.join("widget/ground_truth/crack/001_mask.png"), 4, 4, |_, _| true);
        load(root, "widget").unwrap();

        // Empty test split.
        let c = root.join("widget");
        for dir in ["good", "crack", "dent"] {
            fs::remove_dir_all(c.join("test").join(dir)).unwrap();
        }
        widget_fails(&["widget/test", "no test images"]);
        fs::remove_dir_all(c.join("test")).unwrap();
        widget_fails(&["widget/test", "not found"]);

        // Empty and missing train/good.
        for n in ["000.png", "001.png", "002.png"] {
            fs::remove_file(c.join("train/good").join(n)).unwrap();
        }
        widget_fails(&["widget/train/good", "no images"]);
        fs::remove_dir_all(c.join("train")).unwrap();
        widget_fails(&["widget/train/good", "not found"]);
        assert!(load(root, "").is_err());
    }

    fn visa_tree(csv: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join(VISA_SPLIT);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, csv).unwrap();
        d
    }

    const VISA_CSV: &str = "object,split,label,image,mask\n\
        candle,train,normal,candle/Data/Images/Normal/0002.JPG,\n\
        candle,train,normal,candle/Data/Images/Normal/0001.JPG,\n\
        candle,test,normal,candle/Data/Images/Normal/0003.JPG,\n\
        candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n\
        pcb1,train,normal,pcb1/Data/Images/Normal/0001.JPG,\n\
        pcb1,test,anomaly,pcb1/Data/Images/Anomaly/000.JPG,pcb1/Data/Masks/Anomaly/000.png\n";

    #[test]
    fn visa_layout() {
        let d = visa_tree(VISA_CSV);
        let root = d.path();
        for p in [
            "candle/Data/Images/Normal/0001.JPG",
            "candle/Data/Images/Normal/0002.JPG",
            "candle/Data/Images/Normal/0003.JPG",
            "candle/Data/Images/Anomaly/000.JPG",
            "candle/Data/Masks/Anomaly/000.png",
        ] {
            touch(&root.join(p));
        }
        assert_eq!(categories(root).unwrap(), vec!["candle", "pcb1"]);
        let c = load(root, "candle").unwrap();
        assert_eq!(c, load_visa(root, "candle").unwrap());
        assert_eq!(
            c.train_good,
            vec![
                root.join("candle/Data/Images/Normal/0001.JPG"),
                root.join("candle/Data/Images/Normal/0002.JPG")
            ]
        );
        assert_eq!(
            c.test,
            vec![
                Sample {
                    path: root.join("candle/Data/Images/Anomaly/000.JPG"),
                    anomalous: true,
                    defect: "anomaly".into(),
                    mask: Some(root.join("candle/Data/Masks/Anomaly/000.png")),
                },
                Sample {
                    path: root.join("candle/Data/Images/Normal/0003.JPG"),
                    anomalous: false,
                    defect: "good".into(),
                    mask: None,
                },
            ]
        );
    }

    #[test]
    fn visa_errors() {
        let d = visa_tree(VISA_CSV);
        let root = d.path();
        let e = load(root, "fryum").unwrap_err().to_string();
        assert_mentions(&e, &["fryum", "candle, pcb1", "1cls.csv"]);
        // Image referenced but missing.
        let e = load(root, "pcb1").unwrap_err().to_string();
        assert_mentions(&e, &["pcb1/Data/Images/Normal/0001.JPG", "line 6"]);
        // Mask referenced but missing.
        touch(&root.join("pcb1/Data/Images/Normal/0001.JPG"));
        touch(&root.join("pcb1/Data/Images/Anomaly/000.JPG"));
        let e = load(root, "pcb1").unwrap_err().to_string();
        assert_mentions(&e, &["pcb1/Data/Masks/Anomaly/000.png", "mask referenced"]);
        touch(&root.join("pcb1/Data/Masks/Anomaly/000.png"));
        assert_eq!(load(root, "pcb1").unwrap().test.len(), 1);
        // load_visa without the split file.
        let e = load_visa(&root.join("pcb1"), "pcb1").unwrap_err().to_string();
        assert!(e.contains("split file not found"), "{e}");

        // Empty train and empty test.
        let d = visa_tree("object,split,label,image,mask\nx,test,normal,a.png,\ny,train,normal,b.png,\n");
        touch(&d.path().join("a.png"));
        touch(&d.path().join("b.png"));
        let e = load(d.path(), "x").unwrap_err().to_string();
        assert!(e.contains("`x` has no train/normal images"), "{e}");
        let e = load(d.path(), "y").unwrap_err().to_string();
        assert!(e.contains("`y` has no test images"), "{e}");

        // Malformed files.
        for (csv, want) in [
            ("", "empty file"),
            ("object,split,label,image\n", "lacks column `mask`"),
            ("object,split,label,image,mask\nx,train,normal\n", "line 2: 3 fields"),
            ("object,split,label,image,mask\nx,train,weird,a.png,\n", "label `weird`"),
            ("object,split,label,image,mask\nx,val,normal,a.png,\n", "split `val`"),
            ("object,split,label,image,mask\nx,train,normal,,\n", "empty image path"),
        ] {
            let d = visa_tree(csv);
            let e = load(d.path(), "x").unwrap_err().to_string();
            assert!(e.contains("1cls.csv") && e.contains(want), "{csv:?}: {e}");
        }
    }

    #[test]
    fn class_word_reads_underscores_as_spaces() {
        assert_eq!(class_word("metal_plate"), "metal plate");
        assert_eq!(class_word("pipe_fryum"), "pipe fryum");
        assert_eq!(class_word("bottle"), "bottle");
        assert_eq!(class_word("pcb1"), "pcb1");
        assert_eq!(class_word("a_b_c"), "a b c");
    }

    #[test]
    fn class_words_per_category() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cats = s(&["bottle", "metal_plate", "pipe_fryum"]);
        let words = |labels: &[&str]| class_words(&s(labels), &cats);
        let got = words(&[]).unwrap();
        let want: BTreeMap<String, String> = [
            ("bottle", "bottle"),
            ("metal_plate", "metal plate"),
            ("pipe_fryum", "pipe fryum"),
        ]
        .iter()
        .map(|(c, w)| (c.to_string(), w.to_string()))
        .collect();
        assert_eq!(got, want);
        let got = words(&["metal_plate=steel plate", "bottle = glass bottle"]).unwrap();
        assert_eq!(got["metal_plate"], "steel plate");
        assert_eq!(got["bottle"], "glass bottle");
        assert_eq!(got["pipe_fryum"], "pipe fryum");

        // A bare word with several categories: refused, naming them.
        let e = words(&["object"]).unwrap_err().to_string();
        let parts = [
            "`object` has no category",
            "3 categories",
            "bottle, metal_plate, pipe_fryum",
            "CATEGORY=WORD",
        ];
        assert_mentions(&e, &parts);
        let e = words(&["tile=tile"]).unwrap_err().to_string();
        assert!(e.contains("`tile` is not evaluated"), "{e}");
        let e = words(&["bottle="]).unwrap_err().to_string();
        assert!(e.contains("word is empty"), "{e}");
        let e = words(&["bottle=a", "bottle=b"]).unwrap_err().to_string();
        assert!(e.contains("two words (`a` and `b`)"), "{e}");

        // A bare word with one category: that category's word.
        let one = s(&["metal_plate"]);
        assert_eq!(class_words(&s(&["plate"]), &one).unwrap()["metal_plate"], "plate");
        assert_eq!(class_words(&[], &one).unwrap()["metal_plate"], "metal plate");
        let e = class_words(&s(&["plate", "metal_plate=sheet"]), &one)
            .unwrap_err()
            .to_string();
        assert!(e.contains("two words"), "{e}");
    }

    /// VisA's masks hold small label values (1, 2), not 255: any non-zero pixel is defective, and
    /// the pixel AUROC of a map that is high exactly there is 1.
    #[test]
    fn visa_masks_with_small_values() {
        let d = visa_tree(
            "object,split,label,image,mask\n\
             pipe_fryum,train,normal,pipe_fryum/Data/Images/Normal/0000.JPG,\n\
             pipe_fryum,test,normal,pipe_fryum/Data/Images/Normal/0001.JPG,\n\
             pipe_fryum,test,anomaly,pipe_fryum/Data/Images/Anomaly/000.JPG,pipe_fryum/Data/Masks/Anomaly/000.png\n\
             pipe_fryum,test,anomaly,pipe_fryum/Data/Images/Anomaly/001.JPG,pipe_fryum/Data/Masks/Anomaly/001.png\n",
        );
        let root = d.path();
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([90, 90, 90]));
        for p in [
            "Normal/0000.JPG",
            "Normal/0001.JPG",
            "Anomaly/000.JPG",
            "Anomaly/001.JPG",
        ] {
            let p = root.join("pipe_fryum/Data/Images").join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            img.save_with_format(&p, image::ImageFormat::Jpeg).unwrap();
        }
        // 000: value 1 in the 3×3 block at (2..5, 2..5), at the image's size; 001: value 2 in the
        // top-left quarter of a 4×4 mask (read back at 8×8).
        let masks = root.join("pipe_fryum/Data/Masks/Anomaly");
        fs::create_dir_all(&masks).unwrap();
        let region = |x: u32, y: u32| (2..5).contains(&x) && (2..5).contains(&y);
        image::GrayImage::from_fn(8, 8, |x, y| image::Luma([region(x, y) as u8]))
            .save(masks.join("000.png"))
            .unwrap();
        image::GrayImage::from_fn(4, 4, |x, y| image::Luma([if x < 2 && y < 2 { 2 } else { 0 }]))
            .save(masks.join("001.png"))
            .unwrap();

        let c = load_visa(root, "pipe_fryum").unwrap();
        assert_eq!(c.test.len(), 3);
        let mut auroc = crate::eval::metrics::PixelAuroc::new(0.0, 1.0, 16).unwrap();
        let mut defective = 0;
        for s in &c.test {
            let (w, h) = image::image_dimensions(&s.path).unwrap();
            let mask = match &s.mask {
                Some(m) => read_mask(m, w, h).unwrap(),
                None => vec![false; (w * h) as usize],
            };
            let name = s.path.file_name().unwrap().to_str().unwrap();
            let want: Vec<bool> = (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .map(|(x, y)| match name {
                    "000.JPG" => region(x, y),
                    "001.JPG" => x < 4 && y < 4,
                    _ => false,
                })
                .collect();
            assert_eq!(mask, want, "{name}");
            defective += mask.iter().filter(|&&m| m).count();
            // A map that is high exactly on the defect.
            let map: Vec<f32> = want.iter().map(|&m| if m { 0.9 } else { 0.1 }).collect();
            auroc.add(&map, &mask).unwrap();
        }
        assert_eq!(defective, 9 + 16);
        assert_eq!(auroc.finish().unwrap(), 1.0);
    }

    #[test]
    fn shots() {
        let train: Vec<PathBuf> = (0..10).map(|i| PathBuf::from(format!("{i:03}.png"))).collect();
        let a = draw_shots(&train, 4, 1).unwrap();
        assert_eq!(a, draw_shots(&train, 4, 1).unwrap());
        assert_eq!(a.len(), 4);
        let set: BTreeSet<_> = a.iter().collect();
        assert_eq!(set.len(), 4, "distinct");
        assert!(a.iter().all(|p| train.contains(p)));
        // Different seeds differ (somewhere among a few).
        assert!((2..6).any(|s| draw_shots(&train, 4, s).unwrap() != a));
        // All of them: a permutation.
        let all: BTreeSet<_> = draw_shots(&train, 10, 5).unwrap().into_iter().collect();
        assert_eq!(all.len(), 10);
        // A smaller K is a prefix of a larger one with the same seed.
        assert_eq!(draw_shots(&train, 2, 1).unwrap(), a[..2]);
        let e = draw_shots(&train, 0, 1).unwrap_err().to_string();
        assert!(e.contains("k = 0") && e.contains("10"), "{e}");
        let e = draw_shots(&train, 11, 1).unwrap_err().to_string();
        assert!(e.contains("k = 11") && e.contains("from 10"), "{e}");
        assert!(draw_shots(&[], 1, 0).is_err());
    }

    #[test]
    fn masks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m_mask.png");
        // 4×2: left half set, with VisA's small label values 2 and 1 (set: any non-zero pixel).
        let img = image::GrayImage::from_raw(4, 2, vec![255, 2, 0, 0, 255, 1, 0, 0]).unwrap();
        img.save(&p).unwrap();
        assert_eq!(
            read_mask(&p, 4, 2).unwrap(),
            [true, true, false, false, true, true, false, false]
        );
        // Downscale to 2×2: pixel centres map to source columns 1 and 3 (rows kept).
        assert_eq!(read_mask(&p, 2, 2).unwrap(), [true, false, true, false]);
        // Downscale to 2×1: source row 1, columns 1 (value 1: set) and 3.
        assert_eq!(read_mask(&p, 2, 1).unwrap(), [true, false]);
        // 1×1 keeps the centre-ish pixel (2,1).
        assert_eq!(read_mask(&p, 1, 1).unwrap(), [false]);
        // Upscale to 8×4: each source pixel becomes a 2×2 block, no grey edge grows or shrinks it.
        let up = read_mask(&p, 8, 4).unwrap();
        assert_eq!(&up[..8], [true, true, true, true, false, false, false, false]);
        assert_eq!(&up[16..24], [true, true, true, true, false, false, false, false]);
        assert_eq!(up[..8], up[8..16]);
        // RGB masks are read through luma.
        let rgb = d.path().join("rgb.png");
        image::RgbImage::from_pixel(3, 3, image::Rgb([255, 255, 255]))
            .save(&rgb)
            .unwrap();
        assert_eq!(read_mask(&rgb, 3, 3).unwrap(), vec![true; 9]);

        let e = read_mask(&d.path().join("missing.png"), 4, 2).unwrap_err().to_string();
        assert!(e.contains("missing.png"), "{e}");
        let bad = d.path().join("bad.png");
        fs::write(&bad, b"not a png").unwrap();
        let e = read_mask(&bad, 4, 2).unwrap_err().to_string();
        assert!(e.contains("bad.png") && e.contains("cannot read mask"), "{e}");
        let e = read_mask(&p, 0, 2).unwrap_err().to_string();
        assert!(e.contains("m_mask.png"), "{e}");
    }
}
