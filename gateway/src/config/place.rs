//! Places in a configuration text: every error names its file, line,
//! column and field.
//!
//! A [`Document`] is a TOML text (`eddy.toml`, a rules-directory file)
//! with the spans of its keys and values. Problems are found on the
//! deserialized structs, which know field paths (`rules[0].sql`) but not
//! positions; [`Document::place`] turns a path into a line and column, and
//! [`Document::place_in_string`] a position inside a string value (a rule's
//! SQL) into one in the file.

use std::fmt;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Where a field is in the configuration's structure: `engine.views[1].size`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Seg>);

impl FieldPath {
    /// The document itself.
    pub fn root() -> Self {
        Self::default()
    }

    /// A path of keys: `FieldPath::of(&["engine", "window"])`.
    pub fn of(keys: &[&str]) -> Self {
        Self(keys.iter().map(|k| Seg::Key((*k).to_string())).collect())
    }

    /// This path, then `key`.
    pub fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_string()));
        p
    }

    /// This path, then element `i` of the array it names.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// An error with its place: `file:line:column: subject: message`.
///
/// `line` and `column` are 1-based; 0 when the error has no place in a
/// text (an unreadable file, a rule from the API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The file, or where the text came from (`api`, `store`).
    pub source: String,
    pub line: usize,
    pub column: usize,
    /// The rule the error is about, if any.
    pub rule: Option<String>,
    /// The field (`engine.window`), for errors outside rules.
    pub field: Option<String>,
    pub message: String,
}

impl Placed {
    /// An error with no place in a text.
    pub fn unplaced(source: &str, rule: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            source: source.to_string(),
            line: 0,
            column: 0,
            rule: rule.map(str::to_string),
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Placed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        match (&self.rule, &self.field) {
            (Some(rule), _) => write!(f, ": rule `{rule}`")?,
            (None, Some(field)) if !field.is_empty() => write!(f, ": `{field}`")?,
            _ => {}
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error of a text, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PlacedErrors(pub Vec<Placed>);

impl fmt::Display for PlacedErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A TOML text with where each key and value is.
#[derive(Debug)]
pub struct Document<'t> {
    source: String,
    text: &'t str,
    root: Option<Spanned<DeTable<'t>>>,
}

impl<'t> Document<'t> {
    /// `source` names the text in errors (a path, `<text>`).
    pub fn new(source: &str, text: &'t str) -> Self {
        Self {
            source: source.to_string(),
            text,
            root: DeTable::parse(text).ok(),
        }
    }

    /// The name errors carry.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text.
    pub fn text(&self) -> &'t str {
        self.text
    }

    /// Deserializes the text; a syntax or type error is placed where the
    /// TOML parser found it.
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, Placed> {
        toml::from_str::<T>(self.text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| self.line_col(s.start));
            Placed {
                source: self.source.clone(),
                line,
                column,
                rule: None,
                field: e
                    .span()
                    .and_then(|s| self.field_at(s.start))
                    .map(|p| p.to_string()),
                message: e.message().trim().to_string(),
            }
        })
    }

    /// An error about `field`, placed at its key (or, when the field is
    /// not written out, at the nearest enclosing table or element).
    pub fn error(&self, field: &FieldPath, message: impl Into<String>) -> Placed {
        let (line, column) = self.place(field);
        Placed {
            source: self.source.clone(),
            line,
            column,
            rule: None,
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// Line and column of `field`'s key; of the nearest written ancestor
    /// when it is not in the text; (0, 0) when nothing of it is.
    pub fn place(&self, field: &FieldPath) -> (usize, usize) {
        self.walk(field)
            .last()
            .map_or((0, 0), |&(at, _)| self.line_col(at))
    }

    /// The written prefix of `field`: for each step, where its key (or
    /// element) starts and its value.
    fn walk<'d>(&'d self, field: &FieldPath) -> Vec<(usize, &'d Spanned<DeValue<'t>>)> {
        let mut steps = Vec::new();
        let Some(root) = &self.root else {
            return steps;
        };
        let mut table = Some(root.get_ref());
        let mut array: Option<&toml::de::DeArray<'t>> = None;
        for seg in &field.0 {
            let (at, value) = match (seg, table, array) {
                (Seg::Key(k), Some(t), _) => match t.get_key_value(k.as_str()) {
                    Some((key, v)) => (key.span().start, v),
                    None => break,
                },
                (Seg::Index(i), _, Some(a)) => match a.get(*i) {
                    Some(v) => (self.element_start(v), v),
                    None => break,
                },
                _ => break,
            };
            steps.push((at, value));
            (table, array) = match value.get_ref() {
                DeValue::Table(t) => (Some(t), None),
                DeValue::Array(a) => (None, Some(a)),
                _ => (None, None),
            };
        }
        steps
    }

    /// The innermost field whose key or value holds byte `offset`.
    pub fn field_at(&self, offset: usize) -> Option<FieldPath> {
        fn table(t: &DeTable<'_>, path: &FieldPath, offset: usize) -> Option<FieldPath> {
            t.iter().find_map(|(k, v)| {
                let here = path.key(k.get_ref());
                if k.span().contains(&offset) {
                    return Some(here);
                }
                // Tables and arrays are searched whatever their span: a
                // `[table]`'s body lies outside its header's span.
                value(v.get_ref(), &here, offset)
                    .or_else(|| v.span().contains(&offset).then_some(here))
            })
        }
        fn value(v: &DeValue<'_>, path: &FieldPath, offset: usize) -> Option<FieldPath> {
            match v {
                DeValue::Table(t) => table(t, path, offset),
                DeValue::Array(a) => a.iter().enumerate().find_map(|(i, e)| {
                    let here = path.index(i);
                    value(e.get_ref(), &here, offset)
                        .or_else(|| e.span().contains(&offset).then_some(here))
                }),
                _ => None,
            }
        }
        let root = self.root.as_ref()?;
        table(root.get_ref(), &FieldPath::root(), offset)
    }

    /// Where element `v` of an array starts: for a `[[table]]`, the header
    /// line; otherwise the value itself.
    fn element_start(&self, v: &Spanned<DeValue<'_>>) -> usize {
        let start = v.span().start;
        // An array-of-tables element's span begins after its header; step
        // back to the `[[` that opens the line.
        let before = &self.text[..start.min(self.text.len())];
        let line_start = before.rfind('\n').map_or(0, |n| n + 1);
        if self.text[line_start..].trim_start().starts_with("[[") {
            return line_start
                + (self.text[line_start..].len() - self.text[line_start..].trim_start().len());
        }
        start
    }

    /// The place in the file of (`line`, `column`) inside the string value
    /// of `field` (both 1-based, as the SQL parser reports them); the key's
    /// place when the value is not a string written in the text.
    pub fn place_in_string(&self, field: &FieldPath, line: usize, column: usize) -> (usize, usize) {
        let key = self.place(field);
        let Some(span) = self.value_span(field) else {
            return key;
        };
        let raw = &self.text[span.start.min(self.text.len())..];
        let (quotes, skip_newline) = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
            (3, true)
        } else if raw.starts_with('"') || raw.starts_with('\'') {
            (1, false)
        } else {
            return key;
        };
        let mut content = span.start + quotes;
        // A newline right after a triple quote is not part of the string.
        if skip_newline {
            let rest = &self.text[content..];
            if rest.starts_with("\r\n") {
                content += 2;
            } else if rest.starts_with('\n') {
                content += 1;
            }
        }
        let (base_line, base_col) = self.line_col(content);
        let line = line.max(1);
        let column = column.max(1);
        if line == 1 {
            (base_line, base_col + column - 1)
        } else {
            (base_line + line - 1, column)
        }
    }

    fn value_span(&self, field: &FieldPath) -> Option<std::ops::Range<usize>> {
        let steps = self.walk(field);
        (steps.len() == field.0.len())
            .then(|| steps.last().map(|(_, v)| v.span()))
            .flatten()
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_elements_and_strings_are_placed() {
        let text = "data_dir = \"x\"\n[engine]\nwindow = \"0s\"\n\n[[rules]]\nname = \"a\"\nsql = \"SELECT 1\"\n\n[[rules]]\n  name = \"b\"\nsql = \"\"\"\nSELECT\n  max(t)\"\"\"\n";
        let doc = Document::new("f.toml", text);
        assert_eq!(doc.place(&FieldPath::of(&["engine", "window"])), (3, 1));
        let rules = FieldPath::of(&["rules"]);
        assert_eq!(doc.place(&rules.index(0)), (5, 1));
        assert_eq!(doc.place(&rules.index(0).key("name")), (6, 1));
        assert_eq!(doc.place(&rules.index(1).key("name")), (10, 3));
        // Not written out: the element's header.
        assert_eq!(doc.place(&rules.index(1).key("window")), (9, 1));
        assert_eq!(
            doc.place_in_string(&rules.index(0).key("sql"), 1, 8),
            (7, 15)
        );
        assert_eq!(
            doc.place_in_string(&rules.index(1).key("sql"), 2, 3),
            (13, 3)
        );
        assert_eq!(doc.place(&FieldPath::of(&["nope"])), (0, 0));
        let e = doc.error(
            &FieldPath::of(&["engine", "window"]),
            "must be longer than 0",
        );
        assert_eq!(
            e.to_string(),
            "f.toml:3:1: `engine.window`: must be longer than 0"
        );
    }

    #[test]
    fn inline_arrays_of_tables_are_placed_at_the_element() {
        let text = "rules = [{name = \"r\", metric = \"t\"}, {name = \"s\"}]\n";
        let doc = Document::new("f.toml", text);
        let rules = FieldPath::of(&["rules"]);
        assert_eq!(doc.place(&rules.index(1).key("name")), (1, 39));
        assert_eq!(doc.place(&rules.index(1).key("window")), (1, 38));
    }
}
