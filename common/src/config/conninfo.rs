//! libpq's keyword/value connection strings (`host=db user=likes
//! password='a b' dbname=likes`), the other form `database.url` may take
//! besides a `postgres://` URL
//! (<https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING-KEYWORD-VALUE>).
//! tokio-postgres reads both forms itself; this module exists for the two
//! things the service does to a string before handing it over: masking the
//! password when settings are shown, and rewriting `sslmode` (libpq knows
//! more modes than tokio-postgres).

/// Whether `s` is a URL (`postgres://…`, `postgresql://…`) rather than a
/// keyword/value string.
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// The pairs of a keyword/value string, in order: `keyword = value`
/// separated by whitespace, spaces around `=` optional, a value in single
/// quotes when empty or holding spaces, `\'` and `\\` escaping a quote and a
/// backslash.
pub fn parse(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut keyword = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            keyword.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("`{keyword}` has no `=` and value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if_eq(&'\'').is_some();
        loop {
            match chars.next() {
                None if quoted => {
                    return Err(format!("the value of `{keyword}` has no closing quote"));
                }
                None => break,
                Some('\'') if quoted => break,
                Some(c) if c.is_whitespace() && !quoted => break,
                Some('\\') => value.push(
                    chars
                        .next()
                        .ok_or_else(|| format!("the value of `{keyword}` ends in `\\`"))?,
                ),
                Some(c) => value.push(c),
            }
        }
        pairs.push((keyword, value));
    }
}

/// A keyword/value string holding `pairs`, every value quoted.
pub fn render<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(keyword, value)| {
            format!(
                "{keyword}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        parse(s).expect("parses")
    }

    #[test]
    fn reads_what_libpq_reads() {
        assert_eq!(
            pairs(
                "host=db  port = 5432\tdbname='likes' password='a \\'b\\' c\\\\' sslmode= verify-full"
            ),
            [
                ("host", "db"),
                ("port", "5432"),
                ("dbname", "likes"),
                ("password", "a 'b' c\\"),
                ("sslmode", "verify-full"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(pairs("user='' "), [("user".to_owned(), String::new())]);
        assert!(pairs("   ").is_empty());
    }

    #[test]
    fn refuses_what_libpq_refuses() {
        for bad in ["host", "host db", "password='open", "password=end\\"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renders_what_it_reads() {
        let original = pairs("host=db password='it\\'s a \\\\ secret' dbname=likes");
        let rendered = render(original.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(pairs(&rendered), original);
        assert!(!is_url(&rendered));
        assert!(is_url("postgres://db/likes") && is_url("postgresql://db/likes"));
    }
}
