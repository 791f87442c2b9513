//! Format-aware mutators: edits that a blind mutator would almost never make valid enough to reach
//! the checks behind the parser (a PNG chunk with a correct CRC, a safetensors header of the right
//! length, a detector whose content hash matches its altered content).
use crate::mutate;
use crate::rng::Rng;
use serde_json::Value;

/// Picture sides on the boundaries of the photo limits (minimum side 4, 100 MP, u16/u32 maxima).
const SIDES: [u32; 9] = [0, 1, 3, 4, 10_000, 10_001, 23_000, 65_535, 0x7fff_ffff];

fn crc(kind: &[u8], data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(kind);
    c.update(data);
    c.sum()
}

/// The chunks of a PNG: (type, data) after the 8-byte signature; `None` if it does not parse.
fn png_chunks(png: &[u8]) -> Option<Vec<([u8; 4], Vec<u8>)>> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 12 <= png.len() {
        let n = u32::from_be_bytes(png[at..at + 4].try_into().ok()?) as usize;
        let kind: [u8; 4] = png[at + 4..at + 8].try_into().ok()?;
        let data = png.get(at + 8..at + 8 + n)?.to_vec();
        out.push((kind, data));
        at += 12 + n;
    }
    Some(out)
}

/// An edit inside a PNG's chunks with every CRC made right again, so the decoder gets past it.
pub fn png(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let Some(mut chunks) = png_chunks(seed) else {
        return seed.to_vec();
    };
    let i = rng.below(chunks.len());
    match rng.below(4) {
        0 => {
            // IHDR: width, height (decompression bombs, zero and tiny sides).
            let side = rng.below(2) * 4;
            chunks[0].1[side..side + 4].copy_from_slice(&rng.pick(&SIDES).to_be_bytes());
            if rng.one_in(2) {
                let other = 4 - side;
                chunks[0].1[other..other + 4].copy_from_slice(&rng.pick(&SIDES).to_be_bytes());
            }
        }
        1 => {
            // IHDR: bit depth, colour type, interlace.
            let at = 8 + rng.below(5);
            chunks[0].1[at] = *rng.pick(&[0u8, 1, 2, 3, 4, 6, 8, 16, 255]);
        }
        2 => chunks.insert(i, chunks[i].clone()),
        _ => mutate::bytes(&mut chunks[i].1, rng),
    }
    let mut out = seed[..8].to_vec();
    for (kind, data) in &chunks {
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(kind);
        out.extend(data);
        out.extend(crc(kind, data).to_be_bytes());
    }
    out
}

/// A JPEG with its frame's sides set to boundary values (or a blind edit of the scan data).
pub fn jpeg(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    let sof = out
        .windows(2)
        .position(|w| w[0] == 0xff && (0xc0..=0xc2).contains(&w[1]));
    match sof {
        Some(at) if rng.one_in(2) && at + 9 <= out.len() => {
            let side = at + 5 + 2 * rng.below(2);
            let v = (*rng.pick(&SIDES)).min(65_535) as u16;
            out[side..side + 2].copy_from_slice(&v.to_be_bytes());
            if rng.one_in(3) {
                // Component count and sampling factors.
                let nf = at + 9.min(out.len() - at - 1);
                out[nf] = *rng.pick(&[0u8, 1, 2, 4, 255]);
            }
        }
        _ => mutate::bytes(&mut out, rng),
    }
    out
}

/// Splits a safetensors file into its header JSON and the data after it.
pub fn st_split(file: &[u8]) -> Option<(Value, &[u8])> {
    let n = u64::from_le_bytes(file.get(..8)?.try_into().ok()?) as usize;
    let header = serde_json::from_slice(file.get(8..8 + n)?).ok()?;
    Some((header, &file[8 + n..]))
}

/// A safetensors file with its header JSON edited (shapes, dtypes, offsets, metadata) and the
/// length prefix made right, or now and then wrong.
pub fn safetensors(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let Some((header, data)) = st_split(seed) else {
        return seed.to_vec();
    };
    let json = mutate::json_bytes(&header, rng);
    let mut n = json.len() as u64;
    if rng.one_in(8) {
        n = *rng.pick(&[0, 1, n.saturating_sub(1), n + 1, u32::MAX as u64, u64::MAX]);
    }
    let mut out = n.to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    out
}
