//! Items as lines (`jetcrawl export --items F.jsonl|F.csv`): one JSON object per line,
//! or CSV with a column per field.
//!
//! CSV columns: `item_id, item_type, url, fetched_at, stored_at`, then every field name
//! the exported items use (the union over their types, sorted; `--type T` narrows the
//! export, and so the columns, to one type). A field named like a fixed column is
//! headed `data.<name>`. Cells: strings as they are, numbers and booleans as JSON, arrays
//! and objects as JSON text; a missing field and a null are both empty (JSONL keeps the
//! difference). Quoting is RFC 4180's: a cell with a comma, quote, CR or LF is quoted.

use anyhow::Context;
use serde_json::{Map, Value};

use jetcrawl_sink::store::StoredRow;

/// Columns every CSV export starts with.
const FIXED: [&str; 5] = ["item_id", "item_type", "url", "fetched_at", "stored_at"];

/// The output format, from the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON Lines.
    Jsonl,
    /// CSV (RFC 4180, CRLF line ends).
    Csv,
}

impl Format {
    /// `.jsonl` or `.csv`; anything else is an error naming what is accepted.
    pub fn of(path: &std::path::Path) -> anyhow::Result<Format> {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("jsonl") => Ok(Format::Jsonl),
            Some(e) if e.eq_ignore_ascii_case("csv") => Ok(Format::Csv),
            _ => anyhow::bail!(
                "--items {}: the file name must end in .jsonl or .csv",
                path.display()
            ),
        }
    }
}

/// One row as a JSON line (with its newline).
pub fn jsonl_line(row: &StoredRow) -> anyhow::Result<String> {
    let data: Value = serde_json::from_str(&row.data)
        .with_context(|| format!("item {}: stored data is not JSON", row.item_id))?;
    let line = serde_json::json!({
        "item_id": row.item_id,
        "item_type": row.item_type,
        "url": row.url,
        "fetched_at": row.fetched_at,
        "stored_at": row.stored_at,
        "data": data,
    });
    Ok(format!("{line}\n"))
}

/// The CSV columns for these field names.
#[derive(Debug, Clone)]
pub struct Columns {
    fields: Vec<String>,
}

impl Columns {
    /// Columns for the field names (sorted, distinct).
    pub fn new(fields: Vec<String>) -> Columns {
        Columns { fields }
    }

    /// The header line.
    pub fn header(&self) -> String {
        let names = FIXED
            .iter()
            .map(|s| s.to_string())
            .chain(
                self.fields
                    .iter()
                    .map(|f| match FIXED.contains(&f.as_str()) {
                        true => format!("data.{f}"),
                        false => f.clone(),
                    }),
            );
        line(names)
    }

    /// One row as a CSV line.
    pub fn row(&self, row: &StoredRow) -> anyhow::Result<String> {
        let data: Map<String, Value> = serde_json::from_str(&row.data)
            .with_context(|| format!("item {}: stored data is not a JSON object", row.item_id))?;
        let fixed = [
            row.item_id.clone(),
            row.item_type.clone(),
            row.url.clone(),
            row.fetched_at.clone().unwrap_or_default(),
            row.stored_at.clone(),
        ];
        let fields = self.fields.iter().map(|f| cell(data.get(f)));
        Ok(line(fixed.into_iter().chain(fields)))
    }
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn line(cells: impl Iterator<Item = String>) -> String {
    let mut out = cells.map(|c| quote(&c)).collect::<Vec<_>>().join(",");
    out.push_str("\r\n");
    out
}

fn quote(cell: &str) -> String {
    if cell.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(data: &str) -> StoredRow {
        StoredRow {
            item_id: "id1".into(),
            item_type: "book".into(),
            url: "http://a/x".into(),
            data: data.into(),
            fetched_at: Some("2026-01-01T00:00:00+00:00".into()),
            stored_at: "2026-01-01T00:00:01+00:00".into(),
        }
    }

    #[test]
    fn csv_cells_are_quoted_and_typed() {
        let cols = Columns::new(vec![
            "n".into(),
            "tags".into(),
            "title".into(),
            "url".into(),
        ]);
        assert_eq!(
            cols.header(),
            "item_id,item_type,url,fetched_at,stored_at,n,tags,title,data.url\r\n"
        );
        let got = cols
            .row(&row(
                r#"{"title":"a \"b\", c\nd","tags":["x","y"],"n":3,"url":null}"#,
            ))
            .unwrap();
        assert_eq!(
            got,
            "id1,book,http://a/x,2026-01-01T00:00:00+00:00,2026-01-01T00:00:01+00:00,\
             3,\"[\"\"x\"\",\"\"y\"\"]\",\"a \"\"b\"\", c\nd\",\r\n"
        );
    }

    #[test]
    fn jsonl_keeps_the_data_as_json() {
        let got = jsonl_line(&row(r#"{"n":3,"x":null}"#)).unwrap();
        let back: Value = serde_json::from_str(got.trim_end()).unwrap();
        assert_eq!(back["data"], serde_json::json!({"n": 3, "x": null}));
        assert_eq!(back["item_id"], "id1");
        assert!(got.ends_with("}\n"));
    }

    #[test]
    fn formats_come_from_the_extension() {
        use std::path::Path;
        assert_eq!(Format::of(Path::new("a.jsonl")).unwrap(), Format::Jsonl);
        assert_eq!(Format::of(Path::new("a.CSV")).unwrap(), Format::Csv);
        assert!(Format::of(Path::new("a.json")).is_err());
        assert!(Format::of(Path::new("a")).is_err());
    }
}
