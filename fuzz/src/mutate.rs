//! Mutators: blind byte edits, and JSON edits that keep the text parseable so that the checks
//! behind the parser are reached.
use crate::rng::Rng;
use serde_json::Value;

const BYTES: [u8; 4] = [0, 0xff, 0x7f, 0x80];
/// Values that sit on boundaries of the integer types the formats use.
const WORDS: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x8000_0000,
    i64::MAX as u64,
    u64::MAX,
];

/// One to four blind edits of `data`.
pub fn bytes(data: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..1 + rng.below(4) {
        one_byte_edit(data, rng);
    }
}

fn one_byte_edit(data: &mut Vec<u8>, rng: &mut Rng) {
    if data.is_empty() {
        data.push(rng.next_u64() as u8);
        return;
    }
    let at = rng.below(data.len());
    match rng.below(8) {
        0 | 1 => data[at] ^= 1 << rng.below(8),
        2 => data[at] = *rng.pick(&BYTES),
        3 => {
            // A boundary integer, little- or big-endian (safetensors vs PNG/JPEG).
            let w = *rng.pick(&WORDS);
            let n = *rng.pick(&[2usize, 4, 8]);
            let b = if rng.one_in(2) {
                w.to_le_bytes()
            } else {
                w.to_be_bytes()
            };
            let src = if rng.one_in(2) { &b[..n] } else { &b[8 - n..] };
            for (i, &x) in src.iter().enumerate() {
                if let Some(d) = data.get_mut(at + i) {
                    *d = x;
                }
            }
        }
        4 => data.truncate(at),
        5 => {
            let n = 1 + rng.below(64);
            let chunk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, chunk);
        }
        6 => {
            // Duplicate a chunk somewhere else (repeated PNG chunks, JPEG segments, JSON).
            let end = (at + 1 + rng.below(256)).min(data.len());
            let chunk = data[at..end].to_vec();
            let to = rng.below(data.len() + 1);
            data.splice(to..to, chunk);
        }
        _ => {
            let end = (at + 1 + rng.below(64)).min(data.len());
            data.drain(at..end);
        }
    }
}

/// Replacement values for a JSON leaf: boundaries, absurd sizes and wrong types. Raw tokens
/// (NaN, overflowing literals) are spliced in as text, since `Value` cannot hold them.
const RAW: [&str; 8] = [
    "NaN",
    "-Infinity",
    "1e400",
    "-0",
    "18446744073709551616",
    "-9223372036854775809",
    "1e-400",
    "0.5",
];
const DTYPES: [&str; 10] = ["F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "F8_E4M3", "I64", "X"];
const MARK: &str = "\u{1}raw\u{1}";

fn absurd(rng: &mut Rng) -> (Value, Option<&'static str>) {
    let v = match rng.below(16) {
        0 => 0.into(),
        1 => (-1).into(),
        2 => 1.into(),
        3 => 1_000_000_000.into(),
        4 => serde_json::json!(1e30),
        5 => u64::MAX.into(),
        6 => i64::MIN.into(),
        7 => (1u64 << 53).into(),
        8 => "string".into(),
        9 => Value::Null,
        10 => true.into(),
        11 => serde_json::json!([]),
        12 => serde_json::json!({}),
        13 => serde_json::json!([1_000_000_000, 1_000_000_000, 0]),
        14 => Value::String(rng.pick(&DTYPES).to_string()),
        _ => return (MARK.into(), Some(*rng.pick(&RAW))),
    };
    (v, None)
}

/// Paths to every node below the root (object keys and array indices).
fn paths(v: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    let children: Vec<(Step, &Value)> = match v {
        Value::Object(m) => m.iter().map(|(k, c)| (Step::Key(k.clone()), c)).collect(),
        Value::Array(a) => a.iter().enumerate().map(|(i, c)| (Step::Index(i), c)).collect(),
        _ => return,
    };
    for (s, c) in children {
        here.push(s);
        out.push(here.clone());
        paths(c, here, out);
        here.pop();
    }
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, s| match s {
        Step::Key(k) => v.get_mut(k.as_str()),
        Step::Index(i) => v.get_mut(*i),
    })
}

/// One to three structure-aware edits of a JSON document, returned as text.
pub fn json(doc: &Value, rng: &mut Rng) -> String {
    let mut v = doc.clone();
    let mut raws = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        if all.is_empty() {
            break;
        }
        match rng.below(10) {
            // Every number in the document set to the same absurd value.
            0 => {
                let (new, raw) = absurd(rng);
                for p in &all {
                    if let Some(n) = at(&mut v, p).filter(|n| n.is_number()) {
                        *n = new.clone();
                        raws.extend(raw);
                    }
                }
            }
            1 => {
                // Drop a key or an element.
                let p = rng.pick(&all).clone();
                let (last, parent) = p.split_last().expect("non-empty path");
                match (at(&mut v, parent), last) {
                    (Some(Value::Object(m)), Step::Key(k)) => drop(m.remove(k)),
                    (Some(Value::Array(a)), Step::Index(i)) => drop(a.remove(*i)),
                    _ => {}
                }
            }
            2 => {
                // Grow an array (more layers, more blocks, longer shapes).
                let p = rng.pick(&all).clone();
                if let Some(Value::Array(a)) = at(&mut v, &p) {
                    let extra = a.first().cloned().unwrap_or(Value::Null);
                    a.extend(std::iter::repeat_n(extra, 1 + rng.below(8)));
                }
            }
            _ => {
                // Prefer numbers and strings: they carry sizes, shapes, offsets and dtypes.
                let leaves: Vec<_> = all
                    .iter()
                    .filter(|p| at(&mut v, p).is_some_and(|n| n.is_number() || n.is_string()))
                    .cloned()
                    .collect();
                let p = if leaves.is_empty() {
                    rng.pick(&all)
                } else {
                    rng.pick(&leaves)
                }
                .clone();
                let (new, raw) = absurd(rng);
                if let Some(n) = at(&mut v, &p) {
                    *n = new;
                    raws.extend(raw);
                }
            }
        }
    }
    let mut text = v.to_string();
    let quoted = serde_json::to_string(MARK).expect("json");
    for raw in raws {
        text = text.replacen(&quoted, raw, 1);
    }
    text
}

/// A mutated JSON document as bytes: mostly structure-aware, sometimes blind.
pub fn json_bytes(doc: &Value, rng: &mut Rng) -> Vec<u8> {
    let mut b = json(doc, rng).into_bytes();
    if rng.one_in(5) {
        bytes(&mut b, rng);
    }
    b
}
