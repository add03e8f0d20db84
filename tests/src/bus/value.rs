//! The values `dbus-send --print-reply` and `dbus-monitor` print, read back
//! into a tree, so that tests check D-Bus types (an `int32` against an
//! `array` of them), not only the digits.

/// One D-Bus value as dbus-send and dbus-monitor print it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int32(i32),
    Uint32(u32),
    Int64(i64),
    Uint64(u64),
    Double(f64),
    Bool(bool),
    /// A string, object path or signature.
    Str(String),
    Variant(Box<Value>),
    Array(Vec<Value>),
    /// An entry of a dictionary (an array of entries).
    Entry(Box<Value>, Box<Value>),
    Struct(Vec<Value>),
}

impl Value {
    /// The value inside a variant; any other value itself.
    pub fn unboxed(&self) -> &Value {
        match self {
            Value::Variant(inner) => inner,
            other => other,
        }
    }

    /// The entries of a dictionary, or `None` if this is not one.
    pub fn entries(&self) -> Option<Vec<(&Value, &Value)>> {
        match self {
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::Entry(key, value) => Some((&**key, &**value)),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// The value (unboxed from its variant) of the string `key` of an
    /// `a{sv}`, or `None`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries()?
            .into_iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
            .map(|(_, v)| v.unboxed())
    }

    /// The keys of a dictionary with string keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .entries()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, _)| match k {
                Value::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        keys.sort();
        keys
    }
}

/// Parses the values printed one after another (a message body).
pub fn parse(text: &str) -> Result<Vec<Value>, String> {
    let mut parser = Parser { rest: text };
    let mut values = Vec::new();
    while !parser.at_end() {
        values.push(parser.value()?);
    }
    Ok(values)
}

struct Parser<'a> {
    rest: &'a str,
}

impl<'a> Parser<'a> {
    fn at_end(&mut self) -> bool {
        self.rest = self.rest.trim_start();
        self.rest.is_empty()
    }

    fn word(&mut self) -> &'a str {
        self.rest = self.rest.trim_start();
        let end = self
            .rest
            .find(char::is_whitespace)
            .unwrap_or(self.rest.len());
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        word
    }

    /// Consumes `token` if it comes next.
    fn eat(&mut self, token: &str) -> bool {
        self.rest = self.rest.trim_start();
        match self.rest.strip_prefix(token) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(format!("expected {token:?} at {:?}", self.context()))
        }
    }

    fn context(&self) -> String {
        self.rest.chars().take(60).collect()
    }

    fn number<T: std::str::FromStr>(&mut self) -> Result<T, String> {
        let word = self.word();
        word.parse()
            .map_err(|_| format!("bad number {word:?} before {:?}", self.context()))
    }

    /// A double-quoted string. dbus-send prints strings without escaping
    /// them, so one ends at the quote that ends its line (or the text).
    fn quoted(&mut self) -> Result<String, String> {
        self.expect("\"")?;
        let (text, rest) = match self.rest.find("\"\n") {
            Some(end) => (&self.rest[..end], &self.rest[end + 1..]),
            None => {
                let trimmed = self.rest.trim_end();
                let text = trimmed
                    .strip_suffix('"')
                    .ok_or_else(|| format!("unterminated string {:?}", self.context()))?;
                (text, "")
            }
        };
        self.rest = rest;
        Ok(text.to_owned())
    }

    /// Values up to the closing `end`.
    fn sequence(&mut self, end: &str) -> Result<Vec<Value>, String> {
        let mut items = Vec::new();
        while !self.eat(end) {
            if self.at_end() {
                return Err(format!("missing {end:?}"));
            }
            items.push(self.value()?);
        }
        Ok(items)
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.word() {
            "int32" => self.number().map(Value::Int32),
            "uint32" => self.number().map(Value::Uint32),
            "int64" => self.number().map(Value::Int64),
            "uint64" => self.number().map(Value::Uint64),
            "double" => self.number().map(Value::Double),
            "boolean" => match self.word() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                other => Err(format!("bad boolean {other:?}")),
            },
            "string" | "signature" => self.quoted().map(Value::Str),
            "object" => {
                self.expect("path")?;
                self.quoted().map(Value::Str)
            }
            "variant" => Ok(Value::Variant(Box::new(self.value()?))),
            "array" => {
                self.expect("[")?;
                self.sequence("]").map(Value::Array)
            }
            "dict" => {
                self.expect("entry(")?;
                let key = self.value()?;
                let value = self.value()?;
                self.expect(")")?;
                Ok(Value::Entry(Box::new(key), Box::new(value)))
            }
            "struct" => {
                self.expect("{")?;
                self.sequence("}").map(Value::Struct)
            }
            other => Err(format!(
                "unknown type {other:?} before {:?}",
                self.context()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_of_variants_parses_with_its_types() {
        let text = r#"
   array [
      dict entry(
         string "/tmp/a b/svc"
         variant             int32 2858
      )
      dict entry(
         string "/usr/bin/sleep"
         variant             array [
               int32 2858
               int32 -2859
            ]
      )
   ]
"#;
        let values = parse(text).unwrap();
        assert_eq!(values.len(), 1);
        let dict = &values[0];
        assert_eq!(dict.get("/tmp/a b/svc"), Some(&Value::Int32(2858)));
        assert_eq!(
            dict.get("/usr/bin/sleep"),
            Some(&Value::Array(vec![Value::Int32(2858), Value::Int32(-2859)]))
        );
        assert_eq!(dict.keys(), ["/tmp/a b/svc", "/usr/bin/sleep"]);
    }

    #[test]
    fn signal_body_and_scalars_parse() {
        let text = "   int32 2861\n   string \"/tmp/dbt/mysleep\"\n   int32 -1\n   uint64 17\n   \
                    boolean false\n   boolean true\n   variant       string \"ebpf\"\n   \
                    struct {\n      uint32 0\n   }\n   array [\n   ]\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                Value::Int32(2861),
                Value::Str("/tmp/dbt/mysleep".into()),
                Value::Int32(-1),
                Value::Uint64(17),
                Value::Bool(false),
                Value::Bool(true),
                Value::Variant(Box::new(Value::Str("ebpf".into()))),
                Value::Struct(vec![Value::Uint32(0)]),
                Value::Array(vec![]),
            ]
        );
    }

    #[test]
    fn a_string_ends_at_the_quote_ending_its_line() {
        assert_eq!(
            parse("string \"<a x=\"1\"/>\"\nstring \"\"").unwrap(),
            vec![Value::Str("<a x=\"1\"/>".into()), Value::Str(String::new())]
        );
    }

    #[test]
    fn unknown_types_are_errors() {
        assert!(parse("array of bytes [ 00 ]").is_err());
        assert!(parse("int32 x").is_err());
    }
}
