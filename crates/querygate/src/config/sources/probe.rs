//! The names a derived `Deserialize` knows, read without any input: a struct's fields, an
//! enum's variants, and the fields of the struct each variant holds. The source kinds and
//! their keys are read from `SourceKind` this way, so that no list of them is kept beside it.
//!
//! How: serde's derive hands its names to the deserializer it is given (`deserialize_struct`
//! gets the fields, `deserialize_enum` the variants). [`Ask`] is a deserializer that has no
//! input and answers every request with those names, as its error. It must not be used to
//! read anything.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, VariantAccess, Visitor,
};

/// A struct's field names (its keys in TOML).
pub fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    names::<T>(Ask(None))
}

/// An enum's variant names, each with the fields of the struct the variant holds.
pub fn variants<T: DeserializeOwned>() -> Vec<(&'static str, &'static [&'static str])> {
    names::<T>(Ask(None))
        .iter()
        .map(|variant| (*variant, names::<T>(Ask(Some(variant)))))
        .collect()
}

fn names<T: DeserializeOwned>(ask: Ask) -> &'static [&'static str] {
    match T::deserialize(ask) {
        Err(Names(names)) => names,
        Ok(_) => &[],
    }
}

/// The names a derived `Deserialize` asked for, returned as the "error" that ends it.
#[derive(Debug)]
struct Names(&'static [&'static str]);

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for Names {}

impl de::Error for Names {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Names(&[])
    }
}

/// Asked for a struct, answers with its fields; asked for an enum, with its variants, or
/// (given a variant's name) with the fields of that variant's struct.
struct Ask(Option<&'static str>);

impl<'de> de::Deserializer<'de> for Ask {
    type Error = Names;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Names> {
        Err(Names(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Names> {
        Err(Names(fields))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Names> {
        match self.0 {
            None => Err(Names(variants)),
            Some(variant) => visitor.visit_enum(Variant(variant)),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map identifier ignored_any
    }
}

/// One variant of an enum, by name.
struct Variant(&'static str);

impl<'de> EnumAccess<'de> for Variant {
    type Error = Names;
    type Variant = Ask;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Ask), Names> {
        let name: de::value::StrDeserializer<'_, Names> = self.0.into_deserializer();
        Ok((seed.deserialize(name)?, Ask(None)))
    }
}

impl<'de> VariantAccess<'de> for Ask {
    type Error = Names;

    fn unit_variant(self) -> Result<(), Names> {
        Err(Names(&[]))
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Names> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Names> {
        Err(Names(&[]))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Names> {
        Err(Names(fields))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Settings {
        url: String,
        #[serde(rename = "password_env")]
        password: Option<String>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Kind {
        #[serde(rename = "pg")]
        Postgres(Settings),
        #[serde(rename = "none")]
        Nothing(Empty),
    }

    #[derive(Deserialize)]
    struct Empty {}

    #[test]
    fn names_are_read_as_serde_writes_them() {
        assert_eq!(super::fields::<Settings>(), ["url", "password_env"]);
        assert_eq!(
            super::variants::<Kind>(),
            [("pg", &["url", "password_env"][..]), ("none", &[][..])]
        );
    }
}
