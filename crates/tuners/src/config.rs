//! How tuner configs are declared and read: plain serde structs with `#[serde(default,
//! deny_unknown_fields)]` (absent fields take their defaults, unknown ones are refused by name),
//! the same way as the training config. [`tuner_config!`] writes the struct, its `Default` and
//! one `with_<field>` setter per field from a single list of fields and defaults.

use serde::de::DeserializeOwned;

/// Declare a tuner config: every field with its default (`pub name: Type = default,`).
/// Generates the struct (serde, `deny_unknown_fields`, absent fields defaulted), `Default`, and
/// `with_<field>(value) -> Self` setters.
macro_rules! tuner_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident: $ty:ty = $default:expr,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)+
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)+ }
            }
        }

        // Public configs' setters are API; only the private configs of this module's tests
        // leave some unused.
        #[cfg_attr(test, allow(dead_code))]
        impl $name {
            $(paste::paste! {
                #[doc = concat!("The same config with `", stringify!($field), "` set.")]
                pub fn [<with_ $field>](mut self, $field: $ty) -> Self {
                    self.$field = $field;
                    self
                }
            })+
        }
    };
}
pub(crate) use tuner_config;

/// A config from a (possibly partial) JSON object. Errors name the field: an unknown one, or
/// the dotted path of one whose value does not parse.
pub fn parse<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde's unknown-field message names the field without its parents: name the path.
        let unknown = inner.strip_prefix("unknown field `").and_then(|rest| rest.split_once('`'));
        match unknown {
            Some((_, expected)) => format!("unknown field `{path}`{expected}"),
            None if path == "." => inner,
            None => format!("field `{path}`: {inner}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    tuner_config! {
        /// A nested config.
        pub struct Inner {
            pub x: u32 = 2,
        }
    }

    tuner_config! {
        pub struct Outer {
            pub a: usize = 1,
            pub b: String = "one".into(),
            pub inner: Inner = Inner::default(),
            #[serde(skip_serializing_if = "Option::is_none")]
            pub maybe: Option<f64> = None,
        }
    }

    #[test]
    fn given_fields_override_and_the_rest_default() {
        let got: Outer = parse(&serde_json::json!({"b": "two", "inner": {"x": 5}, "maybe": 0.5})).unwrap();
        assert_eq!(got, Outer::default().with_b("two".into()).with_inner(Inner { x: 5 }).with_maybe(Some(0.5)));
        assert_eq!(parse::<Outer>(&serde_json::json!({})).unwrap(), Outer::default());
        assert_eq!(parse::<Outer>(&serde_json::json!({"inner": {}})).unwrap(), Outer::default());
    }

    #[test]
    fn errors_name_the_field() {
        let err = |v| parse::<Outer>(&v).unwrap_err();
        assert!(err(serde_json::json!({"c": 1})).starts_with("unknown field `c`"), "{}", err(serde_json::json!({"c": 1})));
        assert!(err(serde_json::json!({"inner": {"y": 1}})).starts_with("unknown field `inner.y`, expected `x`"));
        assert!(err(serde_json::json!({"b": "ok", "a": "many"})).starts_with("field `a`: invalid type"), "{}", err(serde_json::json!({"a": "many"})));
        assert!(err(serde_json::json!({"inner": {"x": -1}})).starts_with("field `inner.x`"), "{}", err(serde_json::json!({"inner": {"x": -1}})));
        assert!(err(serde_json::json!("x")).contains("expected struct Outer"), "{}", err(serde_json::json!("x")));
    }
}
