//! [`Tags`]: an instance's metadata, packed so that a resolver holding
//! 100,000 instances does not spend most of its memory on it.

use std::{borrow::Cow, fmt, iter::FusedIterator};

use serde::{de, ser::SerializeMap, Deserialize, Deserializer, Serialize, Serializer};

/// Free-form metadata of an [`Instance`](crate::Instance) (zone, version,
/// cluster...): string keys, each at most once, with string values, kept
/// in key order.
///
/// A map with the interface of a small `BTreeMap<String, String>`, stored
/// in two allocations however many tags there are: all keys and values end
/// to end in one string, and where each ends. A resolver keeps one per
/// instance it shows; a `BTreeMap` takes a node of over 500 bytes and one
/// allocation per string for the first tag already. Lookups are binary
/// searches; [`insert`](Self::insert) and [`remove`](Self::remove) rebuild
/// the two allocations, which suits metadata set once when an instance is
/// built or decoded.
///
/// Serializes as a JSON object in key order, as a `BTreeMap` does (the
/// value layout stored in etcd and ZooKeeper); a key given twice keeps its
/// last value.
///
/// ```
/// use rpc_ext_registry::Tags;
///
/// let mut tags: Tags = [("zone", "a"), ("version", "1.4.2")].into_iter().collect();
/// assert_eq!(tags.get("zone"), Some("a"));
/// assert_eq!(tags.insert("zone", "b"), Some("a".to_owned()));
/// assert_eq!(&tags["zone"], "b");
/// assert_eq!(tags.len(), 2);
/// assert_eq!(
///     tags.iter().collect::<Vec<_>>(),
///     [("version", "1.4.2"), ("zone", "b")]
/// );
/// assert_eq!(serde_json::to_string(&tags).unwrap(), r#"{"version":"1.4.2","zone":"b"}"#);
/// ```
///
/// The text of all tags together is limited to 4 GiB (`u32` offsets keep
/// the index small); a pair that would go past it is left out.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Tags {
    /// Each key followed by its value, pairs in key order, end to end.
    text: Box<str>,
    /// Where each key and each value ends in `text`: `2 * len()` offsets,
    /// key and value alternating; each part starts where the previous one
    /// ends. Equal maps have equal `text` and `ends`, so the derived
    /// `PartialEq` and `Hash` are those of the map.
    ends: Box<[u32]>,
}

impl Tags {
    /// No tags (allocates nothing).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many tags there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    /// True when there is no tag.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The value of `key`, if set.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|index| self.value(index))
    }

    /// True when `key` is set.
    #[must_use]
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Option<String> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let mut pairs: Vec<(&str, &str)> = self.iter().collect();
        let replaced = match self.position(key) {
            Ok(index) => Some(std::mem::replace(&mut pairs[index].1, value).to_owned()),
            Err(index) => {
                pairs.insert(index, (key, value));
                None
            }
        };
        *self = Self::pack(&pairs);
        replaced
    }

    /// Unsets `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let index = self.position(key).ok()?;
        let removed = self.value(index).to_owned();
        let mut pairs: Vec<(&str, &str)> = self.iter().collect();
        pairs.remove(index);
        *self = Self::pack(&pairs);
        Some(removed)
    }

    /// The tags as `(key, value)`, in key order.
    pub fn iter(&self) -> TagsIter<'_> {
        TagsIter {
            tags: self,
            front: 0,
            back: self.len(),
        }
    }

    /// Packs `pairs`, which are in strictly increasing key order.
    fn pack(pairs: &[(&str, &str)]) -> Self {
        let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut text = String::with_capacity(size.min(u32::MAX as usize));
        let mut ends = Vec::with_capacity(pairs.len() * 2);
        for (key, value) in pairs {
            let (Ok(key_end), Ok(value_end)) = (
                u32::try_from(text.len() + key.len()),
                u32::try_from(text.len() + key.len() + value.len()),
            ) else {
                continue;
            };
            text.push_str(key);
            text.push_str(value);
            ends.extend([key_end, value_end]);
        }
        Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }

    /// Part `index` of `text` (key `i` is part `2i`, its value `2i + 1`).
    fn part(&self, index: usize) -> &str {
        let end = |i: usize| self.ends.get(i).map_or(0, |&end| end as usize);
        let start = index.checked_sub(1).map_or(0, end);
        // In range by construction; "" rather than a panic if it were not.
        self.text.get(start..end(index)).unwrap_or_default()
    }

    fn key(&self, index: usize) -> &str {
        self.part(2 * index)
    }

    fn value(&self, index: usize) -> &str {
        self.part(2 * index + 1)
    }

    /// Where `key` is (`Ok`) or would go (`Err`), by binary search.
    fn position(&self, key: &str) -> Result<usize, usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.key(middle).cmp(key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Ok(middle),
            }
        }
        Err(low)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Tags {
    /// Collects pairs in any order; a key given more than once keeps its
    /// last value, as collecting into a `BTreeMap` does.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut pairs: Vec<(K, V)> = iter.into_iter().collect();
        // Stable: equal keys stay in the order given, the last one wins.
        pairs.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let mut unique: Vec<(&str, &str)> = Vec::with_capacity(pairs.len());
        for (key, value) in &pairs {
            match unique.last_mut() {
                Some(last) if last.0 == key.as_ref() => last.1 = value.as_ref(),
                _ => unique.push((key.as_ref(), value.as_ref())),
            }
        }
        Self::pack(&unique)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Extend<(K, V)> for Tags {
    /// Sets every pair, in order: a later value of a key replaces an
    /// earlier one, and the value already set.
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        let added: Vec<(K, V)> = iter.into_iter().collect();
        if added.is_empty() {
            return;
        }
        let merged: Tags = self
            .iter()
            .chain(added.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
            .collect();
        *self = merged;
    }
}

impl<'a> IntoIterator for &'a Tags {
    type Item = (&'a str, &'a str);
    type IntoIter = TagsIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl std::ops::Index<&str> for Tags {
    type Output = str;

    /// The value of `key`.
    ///
    /// # Panics
    ///
    /// If `key` is not set, as `BTreeMap`'s index does; [`get`](Tags::get)
    /// does not.
    fn index(&self, key: &str) -> &str {
        match self.get(key) {
            Some(value) => value,
            None => panic!("no tag {key:?}"),
        }
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The tags of a [`Tags`], in key order: see [`Tags::iter`].
#[derive(Debug, Clone)]
pub struct TagsIter<'a> {
    tags: &'a Tags,
    /// The next pair from the front, and one past the next from the back.
    front: usize,
    back: usize,
}

impl<'a> Iterator for TagsIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        (self.front < self.back).then(|| {
            self.front += 1;
            (
                self.tags.key(self.front - 1),
                self.tags.value(self.front - 1),
            )
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.back - self.front;
        (left, Some(left))
    }
}

impl DoubleEndedIterator for TagsIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        (self.front < self.back).then(|| {
            self.back -= 1;
            (self.tags.key(self.back), self.tags.value(self.back))
        })
    }
}

impl ExactSizeIterator for TagsIter<'_> {}

impl FusedIterator for TagsIter<'_> {}

impl Serialize for Tags {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (key, value) in self {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TagsVisitor)
    }
}

struct TagsVisitor;

impl<'de> de::Visitor<'de> for TagsVisitor {
    type Value = Tags;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of strings to strings")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Tags, A::Error> {
        // Capped: the size hint comes from the input.
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(pair) = map.next_entry::<Text<'de>, Text<'de>>()? {
            pairs.push(pair);
        }
        Ok(pairs.into_iter().map(|(k, v)| (k.0, v.0)).collect())
    }
}

/// A string read from the input, borrowed where the input allows (JSON
/// without escapes): decoding tags copies their text once, into the packed
/// [`Tags`].
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl<'de> de::Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }

        deserializer.deserialize_str(TextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn sample() -> Vec<(String, String)> {
        [
            ("zone", "a"),
            ("", "empty key"),
            ("version", ""),
            ("zé", "ü"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn behaves_as_a_btree_map() {
        let map: BTreeMap<String, String> = sample().into_iter().collect();
        let tags: Tags = sample().into_iter().collect();
        assert_eq!(tags.len(), map.len());
        assert!(tags
            .iter()
            .eq(map.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
        assert!(tags
            .iter()
            .rev()
            .eq(map.iter().rev().map(|(k, v)| (k.as_str(), v.as_str()))));
        for key in ["zone", "", "version", "zé", "absent", "z"] {
            assert_eq!(tags.get(key), map.get(key).map(String::as_str), "{key:?}");
            assert_eq!(tags.contains_key(key), map.contains_key(key));
        }
    }

    #[test]
    fn the_last_value_of_a_repeated_key_wins() {
        let tags: Tags = [("a", "1"), ("b", "2"), ("a", "3")].into_iter().collect();
        assert_eq!(tags.iter().collect::<Vec<_>>(), [("a", "3"), ("b", "2")]);
        let mut extended = tags.clone();
        extended.extend([("b", "4"), ("c", "5"), ("b", "6")]);
        assert_eq!(
            extended.iter().collect::<Vec<_>>(),
            [("a", "3"), ("b", "6"), ("c", "5")]
        );
    }

    #[test]
    fn insert_and_remove_keep_the_order() {
        let mut tags = Tags::new();
        assert!(tags.is_empty());
        assert_eq!(tags.insert("m", "1"), None);
        assert_eq!(tags.insert("a", "2"), None);
        assert_eq!(tags.insert("z", "3"), None);
        assert_eq!(tags.insert("m", "4"), Some("1".to_owned()));
        assert_eq!(
            tags.iter().collect::<Vec<_>>(),
            [("a", "2"), ("m", "4"), ("z", "3")]
        );
        assert_eq!(tags.remove("m"), Some("4".to_owned()));
        assert_eq!(tags.remove("m"), None);
        assert_eq!(tags.iter().collect::<Vec<_>>(), [("a", "2"), ("z", "3")]);
        // Equal maps are equal however they were built.
        let built: Tags = [("z", "3"), ("a", "2")].into_iter().collect();
        assert_eq!(tags, built);
        assert_eq!(format!("{tags:?}"), r#"{"a": "2", "z": "3"}"#);
    }

    #[test]
    fn json_is_that_of_a_btree_map() {
        let map: BTreeMap<String, String> = sample().into_iter().collect();
        let tags: Tags = sample().into_iter().collect();
        let json = serde_json::to_string(&tags).unwrap();
        assert_eq!(json, serde_json::to_string(&map).unwrap());
        // Escaped text (owned while decoding) and plain text (borrowed).
        let read: Tags =
            serde_json::from_str(r#"{"z\u00e9":"\u00fc","zone":"a","":"empty key","version":""}"#)
                .unwrap();
        assert_eq!(read, tags);
        let repeated: Tags = serde_json::from_str(r#"{"a":"1","a":"2"}"#).unwrap();
        assert_eq!(repeated.get("a"), Some("2"));
        for junk in [r#"{"a":1}"#, r#"["a"]"#, r#""a""#, r#"{"a":null}"#] {
            assert!(serde_json::from_str::<Tags>(junk).is_err(), "{junk}");
        }
    }
}
