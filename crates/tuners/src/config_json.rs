//! Reading tuner configs from partial JSON objects: absent fields take their defaults, unknown
//! fields are refused by name. burn's `#[derive(Config)]` gives a `Deserialize` that requires
//! every field, and typos in config files must not pass silently, so configs are parsed by
//! writing the given fields over the serialised defaults.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// `defaults` with the fields of the JSON object `value` written over them (recursing into
/// nested objects). Errors name the offending field: an unknown one, or one whose value does not
/// parse.
pub fn with_defaults<T: Serialize + DeserializeOwned>(defaults: &T, value: &Value) -> Result<T, String> {
    let base = serde_json::to_value(defaults).map_err(|e| e.to_string())?;
    let mut merged = base.clone();
    overlay(&mut merged, value, "")?;
    serde_json::from_value(merged).map_err(|e| {
        // serde_json's type errors do not say which field they are about: find it by trying
        // the given fields one at a time.
        let culprit = value.as_object().and_then(|fields| {
            fields.iter().find_map(|(key, v)| {
                let mut single = base.clone();
                let patch = Value::Object([(key.clone(), v.clone())].into_iter().collect());
                overlay(&mut single, &patch, "").ok()?;
                serde_json::from_value::<T>(single).err().map(|e| format!("field `{key}`: {e}"))
            })
        });
        culprit.unwrap_or_else(|| e.to_string())
    })
}

/// [`with_defaults`], then the config's own `validate`: how every tuner config reads its JSON.
pub fn parse_validated<T: Serialize + DeserializeOwned>(defaults: &T, value: &Value, validate: impl Fn(&T) -> Result<(), String>) -> Result<T, String> {
    let config = with_defaults(defaults, value)?;
    validate(&config)?;
    Ok(config)
}

/// Write `patch`'s fields over `base`'s, recursing into objects; a key `base` lacks is an error.
pub fn overlay(base: &mut Value, patch: &Value, prefix: &str) -> Result<(), String> {
    let patch = patch.as_object().ok_or_else(|| format!("`{}` must be a JSON object", prefix.trim_end_matches('.')))?;
    let base = base.as_object_mut().expect("defaults serialise to an object");
    for (key, value) in patch {
        let name = format!("{prefix}{key}");
        match base.get_mut(key) {
            None => return Err(format!("unknown field `{name}`")),
            Some(slot) if slot.is_object() && value.is_object() => overlay(slot, value, &format!("{name}."))?,
            Some(slot) => *slot = value.clone(),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Inner {
        x: u32,
    }
    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Outer {
        a: usize,
        b: String,
        inner: Inner,
        maybe: Option<f64>,
    }

    fn defaults() -> Outer {
        Outer { a: 1, b: "one".into(), inner: Inner { x: 2 }, maybe: None }
    }

    #[test]
    fn given_fields_override_and_the_rest_default() {
        let got = with_defaults(&defaults(), &serde_json::json!({"b": "two", "inner": {"x": 5}, "maybe": 0.5})).unwrap();
        assert_eq!(got, Outer { a: 1, b: "two".into(), inner: Inner { x: 5 }, maybe: Some(0.5) });
        assert_eq!(with_defaults(&defaults(), &serde_json::json!({})).unwrap(), defaults());
    }

    #[test]
    fn errors_name_the_field() {
        let err = |v| with_defaults(&defaults(), &v).unwrap_err();
        assert!(err(serde_json::json!({"c": 1})).contains("`c`"));
        assert!(err(serde_json::json!({"inner": {"y": 1}})).contains("`inner.y`"));
        assert!(err(serde_json::json!({"b": "ok", "a": "many"})).contains("field `a`"));
        assert!(err(serde_json::json!([1])).contains("JSON object"));
    }
}
