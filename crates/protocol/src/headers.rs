//! Message headers: their type, their size, and the bound on how many a decoder keeps.
//!
//! Below both [`crate::frame`] (whose `Publish` and `Delivery` decode their headers with
//! `bounded_headers`) and [`crate::codec`] (which re-exports the public items here, where they
//! have always been found).

/// Message headers: ordered string key/value pairs. Keys may repeat.
pub type Headers = Vec<(String, String)>;

/// The most headers a decoded frame keeps. An empty header costs 3 bytes on the wire but 48 in
/// memory, so a frame of the maximum size could otherwise decode into a list of hundreds of
/// thousands of entries (tens of MiB) before any limit is checked. The decoder keeps at most
/// this many plus one, reads and discards the rest, so a list that is too long is still seen to
/// be over any header limit (which can be at most this) while costing at most ~770 KiB.
pub const MAX_DECODED_HEADERS: usize = 16_384;

/// Deserializes a header list keeping at most [`MAX_DECODED_HEADERS`] + 1 entries.
pub(crate) fn bounded_headers<'de, D>(deserializer: D) -> Result<Headers, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct BoundedHeaders;

    impl<'de> serde::de::Visitor<'de> for BoundedHeaders {
        type Value = Headers;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a list of key/value string pairs")
        }

        fn visit_seq<A>(self, mut seq: A) -> Result<Headers, A::Error>
        where
            A: serde::de::SeqAccess<'de>,
        {
            let hint = seq.size_hint().unwrap_or(0);
            let mut headers = Vec::with_capacity(hint.min(MAX_DECODED_HEADERS + 1));
            while headers.len() <= MAX_DECODED_HEADERS {
                match seq.next_element::<(String, String)>()? {
                    Some(header) => headers.push(header),
                    None => return Ok(headers),
                }
            }
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(headers)
        }
    }

    deserializer.deserialize_seq(BoundedHeaders)
}

/// What a header list holds: how many headers, and the bytes of their keys and values.
pub fn header_size(headers: &Headers) -> (usize, usize) {
    let bytes = headers.iter().fold(0usize, |sum, (key, value)| {
        sum.saturating_add(key.len()).saturating_add(value.len())
    });
    (headers.len(), bytes)
}
