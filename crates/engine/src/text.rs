//! Token ids to streamed text, with stop strings.
//!
//! The whole generated sequence is decoded again at every token (a few hundred tokens at most),
//! because byte-level tokens may split a character and decoders treat word boundaries by
//! context; only text that can no longer change is released: a trailing replacement character
//! (an incomplete UTF-8 sequence) and the last few characters that could still begin a stop
//! string are held back.

/// Turns generated ids into text (special tokens skipped).
pub trait Detokenizer: Send {
    fn decode(&self, ids: &[u32]) -> String;
}

impl Detokenizer for iapt_model::Tokenizer {
    fn decode(&self, ids: &[u32]) -> String {
        iapt_model::Tokenizer::decode(self, ids, true).unwrap_or_default()
    }
}

/// One row's generated text, released incrementally.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    stops: Vec<String>,
    /// Text released so far.
    sent: String,
}

/// What one new token released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextStep {
    pub delta: String,
    /// A stop string appeared: the text ends before it, and the row must stop.
    pub stopped: bool,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        Self { ids: Vec::new(), stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), sent: String::new() }
    }

    /// Add one generated token.
    pub fn push(&mut self, token: u32, decoder: &dyn Detokenizer) -> TextStep {
        self.ids.push(token);
        let text = decoder.decode(&self.ids);
        if let Some(cut) = self.stops.iter().filter_map(|s| text.find(s.as_str())).min() {
            return TextStep { delta: self.release(&text, cut), stopped: true };
        }
        let mut end = text.len();
        if text.ends_with('\u{FFFD}') {
            end -= '\u{FFFD}'.len_utf8();
        }
        // Keep back the longest tail that is a proper prefix of some stop string.
        let held =
            self.stops.iter().map(|stop| (1..stop.len()).rev().find(|&n| stop.is_char_boundary(n) && text[..end].ends_with(&stop[..n])).unwrap_or(0)).max();
        end -= held.unwrap_or(0);
        TextStep { delta: self.release(&text, end), stopped: false }
    }

    /// Everything not yet released, at the end of generation.
    pub fn finish(&mut self, decoder: &dyn Detokenizer) -> String {
        let text = decoder.decode(&self.ids);
        let end = text.len();
        self.release(&text, end)
    }

    /// The whole text released so far.
    pub fn text(&self) -> &str {
        &self.sent
    }

    /// Release `text[..end]` beyond what was sent. If the decoder rewrote text already sent
    /// (it should not), nothing more is released until it agrees again.
    fn release(&mut self, text: &str, end: usize) -> String {
        if end <= self.sent.len() || !text.starts_with(self.sent.as_str()) || !text.is_char_boundary(end) {
            return String::new();
        }
        let delta = text[self.sent.len()..end].to_string();
        self.sent.push_str(&delta);
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token i is the i-th string of the table; 9 is half of a two-byte character.
    struct Table;
    const PIECES: [&str; 8] = ["Hel", "lo", " wor", "ld", "!", " EN", "D", "\n"];
    impl Detokenizer for Table {
        fn decode(&self, ids: &[u32]) -> String {
            let mut bytes = Vec::new();
            for &i in ids {
                match i {
                    9 => bytes.push(0xC3),
                    10 => bytes.push(0xA9),
                    i => bytes.extend_from_slice(PIECES[i as usize].as_bytes()),
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    fn run(stops: &[&str], ids: &[u32]) -> (Vec<String>, bool, String) {
        let mut stream = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut deltas = Vec::new();
        for &id in ids {
            let step = stream.push(id, &Table);
            deltas.push(step.delta);
            if step.stopped {
                return (deltas, true, stream.text().to_string());
            }
        }
        deltas.push(stream.finish(&Table));
        (deltas, false, stream.text().to_string())
    }

    #[test]
    fn releases_each_token_when_nothing_is_held() {
        let (deltas, stopped, text) = run(&[], &[0, 1, 2, 3]);
        assert_eq!(deltas, ["Hel", "lo", " wor", "ld", ""]);
        assert!(!stopped);
        assert_eq!(text, "Hello world");
    }

    #[test]
    fn a_stop_string_split_across_tokens_is_never_released() {
        let (deltas, stopped, text) = run(&[" END"], &[0, 1, 5, 6, 4]);
        assert!(stopped);
        assert_eq!(text, "Hello");
        assert_eq!(deltas, ["Hel", "lo", "", ""]);
    }

    #[test]
    fn a_held_back_tail_that_is_not_a_stop_is_released_later() {
        let (deltas, stopped, text) = run(&[" ENDX"], &[0, 5, 6, 4]);
        assert!(!stopped);
        assert_eq!(text, "Hel END!");
        assert_eq!(deltas, ["Hel", "", "", " END!", ""]);
    }

    #[test]
    fn an_incomplete_character_waits_for_its_second_byte() {
        let (deltas, _, text) = run(&[], &[0, 9, 10, 1]);
        assert_eq!(deltas, ["Hel", "", "é", "lo", ""]);
        assert_eq!(text, "Helélo");
    }

    #[test]
    fn the_earliest_stop_string_wins() {
        let (_, stopped, text) = run(&["ld", "wor"], &[0, 1, 2, 3]);
        assert!(stopped);
        assert_eq!(text, "Hello ");
    }
}
