//! The CoRE link format (RFC 6690): the object list of an LwM2M registration and the
//! answer to a discover.
//!
//! Written here rather than taken from coap-lite's `link_format`, already in the tree:
//! that one scans for separators to iterate, so an unterminated quote, a missing `>` or
//! text between a target and its parameters pass as links, where a device's payload must
//! be either read whole or refused. The grammar is RFC 6690 section 2 (after RFC 5988),
//! with the optional whitespace RFC 5988 allows around `,` and `;`.

use std::borrow::Cow;

use nom::branch::alt;
use nom::bytes::complete::{escaped, take_while, take_while1};
use nom::character::complete::{anychar, char};
use nom::combinator::{all_consuming, cut, map, opt, recognize};
use nom::multi::many0;
use nom::sequence::{delimited, pair, preceded, tuple};
use nom::IResult;

/// One link-value: `<target>;name=value;...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link<'a> {
    /// The link-value as written, without the whitespace around it.
    pub text: &'a str,
    /// The URI reference between `<` and `>`.
    pub target: &'a str,
    pub params: Vec<Param<'a>>,
}

/// A link parameter: `name`, `name=token` or `name="quoted"` (the value unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param<'a> {
    pub name: &'a str,
    pub value: Option<Cow<'a, str>>,
}

impl Link<'_> {
    /// The value of the first parameter `name` (names compare ignoring ASCII case, as
    /// RFC 5988's do); a parameter without a value has the empty one.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value.as_deref().unwrap_or_default())
    }

    /// Whether the space-separated list of `rt` holds `value` (RFC 6690 3.1).
    pub fn has_resource_type(&self, value: &str) -> bool {
        self.params
            .iter()
            .filter(|p| p.name.eq_ignore_ascii_case("rt"))
            .filter_map(|p| p.value.as_deref())
            .any(|types| types.split_ascii_whitespace().any(|t| t == value))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not CoRE link format (RFC 6690) at byte {offset}: {found:?}")]
pub struct LinkFormatError {
    pub offset: usize,
    /// The text from there, a few characters of it.
    pub found: String,
}

/// Every link of `text`, or where it stops being link format. An empty text (or only
/// whitespace) is the empty list, as the grammar's `[ link-value *( "," link-value ) ]`
/// allows.
pub fn parse(text: &str) -> Result<Vec<Link<'_>>, LinkFormatError> {
    // After a `,` a link must follow: an error there is the payload's, as inside a link.
    let mut list = all_consuming(delimited(
        ows,
        opt(pair(
            link_value,
            many0(preceded(tuple((ows, char(','), ows)), cut(link_value))),
        )),
        ows,
    ));
    match list(text) {
        Ok((_, None)) => Ok(Vec::new()),
        Ok((_, Some((first, mut rest)))) => {
            rest.insert(0, first);
            Ok(rest)
        }
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(error_at(text, e.input)),
        Err(nom::Err::Incomplete(_)) => Err(error_at(text, "")),
    }
}

fn error_at(text: &str, rest: &str) -> LinkFormatError {
    LinkFormatError {
        offset: text.len().saturating_sub(rest.len()),
        found: rest.chars().take(16).collect(),
    }
}

/// RFC 5988's optional whitespace (with line breaks, which RFC 6690's examples have).
fn ows(input: &str) -> IResult<&str, &str> {
    take_while(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))(input)
}

fn link_value(input: &str) -> IResult<&str, Link<'_>> {
    // Once a `<` starts a link, what follows must be one: an error there is the payload's,
    // not a reason to try something else.
    let start = input;
    let (rest, (target, params)) = pair(
        delimited(char('<'), cut(uri_reference), cut(char('>'))),
        many0(preceded(tuple((ows, char(';'), ows)), cut(link_param))),
    )(input)?;
    let text = start.get(..start.len() - rest.len()).unwrap_or_default();
    Ok((
        rest,
        Link {
            text,
            target,
            params,
        },
    ))
}

/// RFC 3986's characters: printable ASCII less those it never allows in a reference.
fn uri_reference(input: &str) -> IResult<&str, &str> {
    take_while(|c: char| c.is_ascii_graphic() && !"<>\"\\^`{|}".contains(c))(input)
}

fn link_param(input: &str) -> IResult<&str, Param<'_>> {
    map(
        pair(
            parmname,
            opt(preceded(char('='), cut(alt((quoted_string, ptoken))))),
        ),
        |(name, value)| Param { name, value },
    )(input)
}

/// RFC 5987's attr-char, and a final `*` for the extended form (`title*`).
fn parmname(input: &str) -> IResult<&str, &str> {
    recognize(pair(
        take_while1(|c: char| c.is_ascii_alphanumeric() || "!#$&+-.^_`|~".contains(c)),
        opt(char('*')),
    ))(input)
}

/// RFC 5988's ptokenchar.
fn ptoken(input: &str) -> IResult<&str, Cow<'_, str>> {
    map(
        take_while1(|c: char| {
            c.is_ascii_alphanumeric() || "!#$%&'()*+-./:<=>?@[]^_`{|}~".contains(c)
        }),
        Cow::Borrowed,
    )(input)
}

/// `"..."` with `\` quoting the next character; control characters other than tab are
/// not text. Unterminated, it is refused where it opens.
fn quoted_string(input: &str) -> IResult<&str, Cow<'_, str>> {
    let text = |c: char| !matches!(c, '"' | '\\') && (c == '\t' || !c.is_control());
    let (rest, quoted) =
        preceded(char('"'), opt(escaped(take_while1(text), '\\', anychar)))(input)?;
    match char::<_, nom::error::Error<&str>>('"')(rest) {
        Ok((rest, _)) => Ok((rest, unquote(quoted.unwrap_or_default()))),
        Err(_) => Err(nom::Err::Failure(nom::error::Error::new(
            input,
            nom::error::ErrorKind::Char,
        ))),
    }
}

fn unquote(quoted: &str) -> Cow<'_, str> {
    if !quoted.contains('\\') {
        return Cow::Borrowed(quoted);
    }
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(text: &str) -> Vec<&str> {
        parse(text).unwrap().iter().map(|l| l.target).collect()
    }

    fn refused_at(text: &str) -> usize {
        match parse(text) {
            Err(error) => error.offset,
            Ok(links) => panic!("{text:?} read as {links:?}"),
        }
    }

    #[test]
    fn rfc_6690_examples() {
        // Section 5, with the line breaks it shows for readability.
        let text = "</sensors/temp>;if=\"sensor\",\n</sensors/light>;if=\"sensor\"";
        let links = parse(text).unwrap();
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].text, "</sensors/temp>;if=\"sensor\"");
        assert_eq!(links[1].param("if"), Some("sensor"));
        let text = "</sensors>;ct=40;title=\"Sensor Index\",\n\
                    </sensors/temp>;rt=\"temperature-c\";if=\"sensor\",\n\
                    </sensors/light>;rt=\"light-lux\";if=\"sensor\",\n\
                    <http://www.example.com/sensors/t123>;anchor=\"/sensors/temp\"\n\
                    ;rel=\"describedby\",\n\
                    </t>;anchor=\"/sensors/temp\";rel=\"alternate\"";
        let links = parse(text).unwrap();
        assert_eq!(
            links.iter().map(|l| l.target).collect::<Vec<_>>(),
            [
                "/sensors",
                "/sensors/temp",
                "/sensors/light",
                "http://www.example.com/sensors/t123",
                "/t"
            ]
        );
        assert_eq!(links[0].param("ct"), Some("40"));
        assert_eq!(links[0].param("title"), Some("Sensor Index"));
        assert!(links[1].has_resource_type("temperature-c"));
        assert_eq!(links[3].param("rel"), Some("describedby"));
        let links = parse("</firmware/v2.1>;rt=\"firmware\";sz=262144").unwrap();
        assert_eq!(links[0].param("SZ"), Some("262144"));
        // Content-format lists, a flag, an extended value.
        let links = parse("</s>;ct=\"40 41 11542\";obs;title*=UTF-8'en'%e2%82%ac%20rates").unwrap();
        assert_eq!(links[0].param("ct"), Some("40 41 11542"));
        assert_eq!(links[0].param("obs"), Some(""));
        assert_eq!(links[0].params[1].value, None);
        assert_eq!(links[0].param("title*"), Some("UTF-8'en'%e2%82%ac%20rates"));
    }

    #[test]
    fn lwm2m_registrations_and_discover_answers() {
        // LwM2M 1.1's root with its content formats, and an alternate path.
        let links = parse("</>;rt=\"oma.lwm2m\";ct=11543,</1/0>,</3/0>,</3303/0>").unwrap();
        assert!(links[0].has_resource_type("oma.lwm2m"));
        assert_eq!(links[0].target, "/");
        assert_eq!(links.len(), 4);
        assert!(parse("</lwm2m>;rt=oma.lwm2m").unwrap()[0].has_resource_type("oma.lwm2m"));
        assert!(parse("</x>;rt=\"core.rd oma.lwm2m\"").unwrap()[0].has_resource_type("oma.lwm2m"));
        assert!(!parse("</x>;rt=\"oma.lwm2m2\"").unwrap()[0].has_resource_type("oma.lwm2m"));
        // A discover answer: attributes of write-attributes, a dimension.
        let links =
            parse("</3/0>;pmin=10;pmax=60,</3/0/1>,</3/0/7>;dim=8,</3/0/13>;gt=50.5").unwrap();
        assert_eq!(links[2].param("dim"), Some("8"));
        assert_eq!(links[3].param("gt"), Some("50.5"));
    }

    #[test]
    fn separators_inside_quotes_are_text() {
        let links = parse(r#"</3/0>;title="a,b;c",</1/0>;title="say \"hi\", \\ok""#).unwrap();
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].param("title"), Some("a,b;c"));
        assert_eq!(links[0].text, r#"</3/0>;title="a,b;c""#);
        assert_eq!(links[1].param("title"), Some(r#"say "hi", \ok"#));
        assert_eq!(parse(r#"</a>;t="""#).unwrap()[0].param("t"), Some(""));
        assert_eq!(
            parse("</a>;t=\"\u{e9}t\u{e9}\"").unwrap()[0].param("t"),
            Some("\u{e9}t\u{e9}")
        );
    }

    #[test]
    fn whitespace_around_separators_and_the_list() {
        assert_eq!(
            targets("  </1/0> ,\t</3/0> ;  ct=40 ,\r\n</5>  "),
            ["/1/0", "/3/0", "/5"]
        );
        assert!(parse("").unwrap().is_empty());
        assert!(parse(" \r\n ").unwrap().is_empty());
        assert_eq!(targets("<>"), [""]);
    }

    #[test]
    fn what_is_not_link_format_is_refused_where_it_goes_wrong() {
        assert_eq!(refused_at(r#"</3/0>;title="a,b"#), 13);
        assert_eq!(refused_at("/1/0"), 0);
        assert_eq!(refused_at("</1/0>,/3/0"), 7);
        assert_eq!(refused_at("</1/0"), 5);
        assert_eq!(refused_at("</1/0>junk"), 6);
        assert_eq!(refused_at("</1/0>,"), 7);
        assert_eq!(refused_at(",</1/0>"), 0);
        assert_eq!(refused_at("</1/0>,,</3/0>"), 7);
        assert_eq!(refused_at("</1/0>;"), 7);
        assert_eq!(refused_at("</1/0>;=1"), 7);
        assert_eq!(refused_at("</1/0>;ct="), 10);
        assert_eq!(refused_at("</1/0>;ct=a b"), 12);
        assert_eq!(refused_at("</a b>"), 3);
        assert_eq!(refused_at("</a\"b>"), 3);
        assert_eq!(refused_at("</\u{e9}>"), 2);
        assert_eq!(refused_at("</a>;t=\"x\ny\""), 7);
        assert_eq!(refused_at("</a>;t=\"x\\"), 7);
        let error = parse("</1/0>junk").unwrap_err();
        assert_eq!(
            error.to_string(),
            "not CoRE link format (RFC 6690) at byte 6: \"junk\""
        );
    }

    #[test]
    fn a_long_list_is_read_without_recursion() {
        let text = vec!["</3303/0>;title=\"t,;\""; 50_000].join(",");
        assert_eq!(parse(&text).unwrap().len(), 50_000);
        let text = format!("</a>{}", ";x".repeat(50_000));
        assert_eq!(parse(&text).unwrap()[0].params.len(), 50_000);
    }
}
