//! CLIP's BPE tokenizer (lower-cased, start 49406, end 49407, padded to the context: with 0 as
//! open_clip pads, or with a diffusers folder's `pad_token`), with placeholders for concepts.
//!
//! A placeholder becomes the id `49408 + slot`, above the vocabulary, so that the encoder knows
//! where to substitute the concept vector. This is exactly why text features are pooled at the
//! first end token and never at `argmax(ids)` (SPEC §3).
use crate::requests::Prompt;
use crate::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const START: u32 = 49406;
pub const END: u32 = 49407;
/// The id of concept slot `k` is `PLACEHOLDER_BASE + k`.
pub const PLACEHOLDER_BASE: u32 = 49408;
pub const VOCAB_SIZE: usize = 49408;

static BPE_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");

/// The merge list (`"#version: 0.2"` header, then one `a b` rule per line), decompressed.
pub fn bpe_merges_text() -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(BPE_GZ)
        .read_to_string(&mut text)
        .expect("bundled BPE vocabulary");
    text
}

/// A prompt as ids, with where each concept slot sits.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    /// `context_length` ids: start, text, end, zeros.
    pub ids: Vec<u32>,
    /// Index of the first end token: where text features are pooled.
    pub end: usize,
    /// `(position, slot)` of every placeholder occurrence.
    pub concepts: Vec<(usize, usize)>,
}

pub struct ClipTokenizer {
    inner: instant_clip_tokenizer::Tokenizer,
    pad: u32,
}

impl Default for ClipTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl ClipTokenizer {
    pub fn new() -> Self {
        let text = bpe_merges_text();
        let inner = instant_clip_tokenizer::Tokenizer::with_vocabulary(std::io::Cursor::new(text), VOCAB_SIZE as u16)
            .expect("bundled BPE vocabulary is valid");
        Self { inner, pad: 0 }
    }

    /// The same tokenizer padding with `pad` (a diffusers folder's, [`pad_token_id`]).
    pub fn with_pad(self, pad: u32) -> Self {
        Self { pad, ..self }
    }

    /// Ids of plain text, without start and end tokens.
    pub fn encode_text(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        // open_clip collapses whitespace before splitting; so do we.
        let clean = text.split_whitespace().collect::<Vec<_>>().join(" ");
        self.inner.encode(&clean, &mut out);
        out.into_iter().map(|t| t.to_u16() as u32).collect()
    }

    /// Tokenizes a prompt, replacing each concept's placeholder by its slot id. Fails when the
    /// prompt does not fit `context_length` with its start and end tokens.
    pub fn encode(&self, prompt: &Prompt, context_length: usize) -> Result<Tokens> {
        let mut ids = vec![START];
        let mut concepts = Vec::new();
        let mut rest = prompt.text.as_str();
        loop {
            let next = prompt
                .concepts
                .iter()
                .enumerate()
                .filter_map(|(k, c)| {
                    (!c.placeholder.is_empty())
                        .then(|| rest.find(&c.placeholder).map(|at| (at, k)))
                        .flatten()
                })
                .min();
            match next {
                Some((at, k)) => {
                    ids.extend(self.encode_text(&rest[..at]));
                    concepts.push((ids.len(), k));
                    ids.push(PLACEHOLDER_BASE + k as u32);
                    rest = &rest[at + prompt.concepts[k].placeholder.len()..];
                }
                None => {
                    ids.extend(self.encode_text(rest));
                    break;
                }
            }
        }
        for (k, c) in prompt.concepts.iter().enumerate() {
            if !concepts.iter().any(|&(_, s)| s == k) {
                return Err(Error::invalid(
                    "prompt",
                    format!("{:?} does not contain the placeholder {:?}", prompt.text, c.placeholder),
                ));
            }
        }
        ids.push(END);
        if ids.len() > context_length {
            return Err(Error::PromptTooLong {
                prompt: prompt.text.clone(),
                tokens: ids.len(),
                context: context_length,
            });
        }
        let end = ids.len() - 1;
        ids.resize(context_length, self.pad);
        Ok(Tokens { ids, end, concepts })
    }

    /// Every prompt of a batch, which must not be empty.
    pub fn encode_all(&self, prompts: &[Prompt], context_length: usize) -> Result<Vec<Tokens>> {
        if prompts.is_empty() {
            return Err(Error::invalid("prompts", "no prompt given"));
        }
        prompts.iter().map(|p| self.encode(p, context_length)).collect()
    }

    /// The id of a word that is one token, inside a vocabulary of `vocab` rows.
    pub fn single_token(&self, word: &str, vocab: usize) -> Result<usize> {
        let ids = self.encode_text(word);
        let [id] = ids[..] else {
            return Err(Error::invalid(
                "word",
                format!("{word:?} is {} tokens, not one", ids.len()),
            ));
        };
        if id as usize >= vocab {
            return Err(Error::invalid(
                "token",
                format!("id {id} is outside the vocabulary of {vocab}"),
            ));
        }
        Ok(id as usize)
    }
}

/// transformers' `CLIPTokenizer` pads with this when its folder names no pad token.
pub const DEFAULT_PAD_TOKEN: &str = "<|endoftext|>";

/// No tokenizer file is near this size (CLIP's `vocab.json` is 1.6 MB).
const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

fn read_json_value(path: &Path) -> Result<serde_json::Value> {
    let bytes = crate::config::read_bounded(path, MAX_TOKENIZER_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::config(path, e.to_string()))
}

/// The `pad_token` a transformers tokenizer folder names, and the file that names it:
/// `special_tokens_map.json` (which transformers lets override) and `tokenizer_config.json` must
/// agree; neither naming one means transformers' default, `<|endoftext|>`.
fn pad_token(dir: &Path) -> Result<(String, PathBuf)> {
    let mut found: Option<(String, PathBuf)> = None;
    for name in ["special_tokens_map.json", "tokenizer_config.json"] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let token = match read_json_value(&path)?.get("pad_token") {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => match v.get("content").and_then(|c| c.as_str()) {
                Some(s) => s.to_string(),
                None => return Err(Error::config(&path, format!("`pad_token` is {v}, not a token"))),
            },
        };
        match &found {
            Some((first, at)) if *first != token => {
                return Err(Error::config(
                    &path,
                    format!("`pad_token` is {token:?}, but {} says {first:?}", at.display()),
                ))
            }
            Some(_) => {}
            None => found = Some((token, path)),
        }
    }
    Ok(found.unwrap_or_else(|| (DEFAULT_PAD_TOKEN.into(), dir.join("tokenizer_config.json"))))
}

/// The id a diffusers `tokenizer/` folder pads prompts with: its `pad_token` looked up in its
/// `vocab.json` (SD 1.x: `<|endoftext|>`, 49407; SD 2.x: `!`, 0). A token outside the vocabulary
/// is refused, naming the file that names it.
pub fn pad_token_id(dir: &Path) -> Result<u32> {
    let (token, named_in) = pad_token(dir)?;
    let vocab_path = dir.join("vocab.json");
    let vocab = read_json_value(&vocab_path)?;
    let Some(vocab) = vocab.as_object() else {
        return Err(Error::config(&vocab_path, "not a JSON object of token ids"));
    };
    match vocab.get(&token) {
        None => Err(Error::config(
            &named_in,
            format!("`pad_token` {token:?} is not in {}", vocab_path.display()),
        )),
        Some(v) => v
            .as_u64()
            .filter(|&id| id < PLACEHOLDER_BASE as u64)
            .map(|id| id as u32)
            .ok_or_else(|| {
                Error::config(
                    &vocab_path,
                    format!("the id of {token:?} is {v}, not below {PLACEHOLDER_BASE}"),
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_open_clip_ids() {
        let t = ClipTokenizer::new();
        // open_clip.tokenize("a photo of a damaged object")[0][:8]
        let got = t.encode(&Prompt::plain("a photo of a damaged object"), 77).unwrap();
        assert_eq!(&got.ids[..8], &[49406, 320, 1125, 539, 320, 13568, 14115, 49407]);
        assert_eq!(got.end, 7);
        assert_eq!(got.ids.len(), 77);
        assert!(got.ids[8..].iter().all(|&i| i == 0));
    }

    #[test]
    fn placeholders_get_slot_ids() {
        let t = ClipTokenizer::new();
        let p = Prompt::with_concept("A photo of a flawless <c_n>.", "<c_n>", &[0.0]);
        let got = t.encode(&p, 77).unwrap();
        let plain = t.encode(&Prompt::plain("a photo of a flawless"), 77).unwrap();
        assert_eq!(&got.ids[..6], &plain.ids[..6]);
        assert_eq!(got.ids[6], PLACEHOLDER_BASE);
        assert_eq!(got.concepts, vec![(6, 0)]);
        assert_eq!(got.ids[got.end], END);
        // Pooling at argmax would pick the placeholder, not the end token.
        let argmax = got.ids.iter().enumerate().max_by_key(|(_, v)| **v).unwrap().0;
        assert_ne!(argmax, got.end);
    }

    #[test]
    fn pads_with_the_folders_pad_token() {
        let t = ClipTokenizer::new().with_pad(END);
        let got = t.encode(&Prompt::plain("a photo"), 77).unwrap();
        assert_eq!((&got.ids[..4], got.end), (&[START, 320, 1125, END][..], 3));
        assert!(got.ids[4..].iter().all(|&i| i == END));
    }

    #[test]
    fn pad_token_ids_come_from_the_tokenizer_folder() {
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        put("vocab.json", r#"{"!": 0, "<|endoftext|>": 49407, "huge": 60000}"#);
        // No file names one: transformers' default.
        assert_eq!(pad_token_id(dir.path()).unwrap(), END);
        put("special_tokens_map.json", r#"{"pad_token": "!"}"#);
        assert_eq!(pad_token_id(dir.path()).unwrap(), 0);
        put(
            "tokenizer_config.json",
            r#"{"pad_token": {"content": "!", "lstrip": false}}"#,
        );
        assert_eq!(pad_token_id(dir.path()).unwrap(), 0);
        put("special_tokens_map.json", r#"{"pad_token": "<|endoftext|>"}"#);
        let e = pad_token_id(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tokenizer_config.json") && e.contains("but"), "{e}");
        put("tokenizer_config.json", r#"{"pad_token": "<pad>"}"#);
        put("special_tokens_map.json", "{}");
        let e = pad_token_id(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer_config.json") && e.contains("`pad_token` \"<pad>\" is not in"),
            "{e}"
        );
        put("tokenizer_config.json", r#"{"pad_token": "huge"}"#);
        let e = pad_token_id(dir.path()).unwrap_err().to_string();
        assert!(e.contains("vocab.json") && e.contains("60000"), "{e}");
        put("tokenizer_config.json", r#"{"pad_token": 7}"#);
        let e = pad_token_id(dir.path()).unwrap_err().to_string();
        assert!(e.contains("`pad_token` is 7, not a token"), "{e}");
        std::fs::remove_file(dir.path().join("vocab.json")).unwrap();
        put("tokenizer_config.json", "{}");
        assert!(pad_token_id(dir.path()).unwrap_err().to_string().contains("vocab.json"));
    }

    #[test]
    fn batches_and_single_words_are_checked() {
        let t = ClipTokenizer::new();
        assert!(t
            .encode_all(&[], 77)
            .unwrap_err()
            .to_string()
            .contains("invalid prompts: no prompt given"));
        assert_eq!(t.single_token("photo", VOCAB_SIZE).unwrap(), 1125);
        let e = t.single_token("a photo", VOCAB_SIZE).unwrap_err().to_string();
        assert!(e.contains("\"a photo\" is 2 tokens, not one"), "{e}");
        let e = t.single_token("photo", 1000).unwrap_err().to_string();
        assert!(e.contains("id 1125 is outside the vocabulary of 1000"), "{e}");
    }

    #[test]
    fn too_long_and_missing_placeholder_are_errors() {
        let t = ClipTokenizer::new();
        let long = Prompt::plain("word ".repeat(80));
        assert!(matches!(
            t.encode(&long, 77),
            Err(Error::PromptTooLong {
                tokens: 82,
                context: 77,
                ..
            })
        ));
        let p = Prompt::with_concept("a photo of a thing", "<c>", &[0.0]);
        assert!(t
            .encode(&p, 77)
            .unwrap_err()
            .to_string()
            .contains("does not contain the placeholder"));
    }
}
