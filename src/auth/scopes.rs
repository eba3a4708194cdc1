//! What an API key may do: its scopes and its allow-list of spells.

use std::fmt;

/// One permission of a key. Every route needs exactly one (see `http/router.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyScope {
    /// `POST /v1/cast`.
    Cast,
    /// `POST /v1/spells`.
    Publish,
    /// Reading the account: users/me, ledger, usage, spells.
    Read,
    /// Keys, signers, budgets, billing.
    Manage,
}

impl KeyScope {
    pub const ALL: [KeyScope; 4] = [
        KeyScope::Cast,
        KeyScope::Publish,
        KeyScope::Read,
        KeyScope::Manage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::Cast => "cast",
            KeyScope::Publish => "publish",
            KeyScope::Read => "read",
            KeyScope::Manage => "manage",
        }
    }

    pub fn parse(text: &str) -> Option<KeyScope> {
        KeyScope::ALL.into_iter().find(|s| s.as_str() == text)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of scopes, stored as a comma-separated list (`cast,publish,read,manage`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyScopes(u8);

impl KeyScopes {
    pub const ALL: KeyScopes = KeyScopes(0b1111);

    pub fn contains(self, scope: KeyScope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_subset_of(self, other: KeyScopes) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = KeyScope> {
        KeyScope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// The stored form; unknown names (never written by us) are ignored.
    pub fn from_stored(text: &str) -> KeyScopes {
        KeyScopes::from_iter(text.split(',').filter_map(|s| KeyScope::parse(s.trim())))
    }

    pub fn to_stored(self) -> String {
        self.iter()
            .map(KeyScope::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(KeyScope::as_str).collect()
    }
}

impl FromIterator<KeyScope> for KeyScopes {
    fn from_iter<I: IntoIterator<Item = KeyScope>>(scopes: I) -> KeyScopes {
        KeyScopes(scopes.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

impl fmt::Debug for KeyScopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// One entry of a key's allow-list: `owner/name`, or `owner/*` for every spell of an owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpellPattern {
    owner: String,
    /// `None` for `*`.
    name: Option<String>,
}

impl SpellPattern {
    pub fn parse(text: &str) -> Option<SpellPattern> {
        let (owner, name) = text.split_once('/')?;
        if !super::is_valid_handle(owner) {
            return None;
        }
        let name = match name {
            "*" => None,
            name if crate::supply_chain::manifest::is_valid_name(name) => Some(name.to_owned()),
            _ => return None,
        };
        Some(SpellPattern {
            owner: owner.to_owned(),
            name,
        })
    }

    /// Whether the spell `owner/name` is allowed by this pattern.
    pub fn allows(&self, owner: &str, name: &str) -> bool {
        self.owner == owner && self.name.as_deref().is_none_or(|own| own == name)
    }

    /// Whether everything this pattern allows is allowed by `other` too.
    pub fn is_covered_by(&self, other: &SpellPattern) -> bool {
        self.owner == other.owner
            && match (&self.name, &other.name) {
                (_, None) => true,
                (Some(mine), Some(theirs)) => mine == theirs,
                (None, Some(_)) => false,
            }
    }
}

impl fmt::Display for SpellPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name.as_deref().unwrap_or("*"))
    }
}

/// A key's allow-list: `None` allows every spell.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowedSpells(Option<Vec<SpellPattern>>);

impl AllowedSpells {
    pub const ANY: AllowedSpells = AllowedSpells(None);

    pub fn only(patterns: Vec<SpellPattern>) -> AllowedSpells {
        AllowedSpells(Some(patterns))
    }

    pub fn allows(&self, owner: &str, name: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.allows(owner, name)))
    }

    /// Whether this list allows nothing that `other` does not.
    pub fn is_within(&self, other: &AllowedSpells) -> bool {
        match (&self.0, &other.0) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(mine), Some(theirs)) => mine
                .iter()
                .all(|p| theirs.iter().any(|t| p.is_covered_by(t))),
        }
    }

    /// Stored as newline-separated patterns; `None` is NULL.
    pub fn from_stored(text: Option<&str>) -> AllowedSpells {
        AllowedSpells(text.map(|text| text.lines().filter_map(SpellPattern::parse).collect()))
    }

    pub fn to_stored(&self) -> Option<String> {
        self.0.as_ref().map(|patterns| {
            patterns
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// The list as the API shows it (`null` for any).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.0 {
            None => serde_json::Value::Null,
            Some(patterns) => patterns.iter().map(ToString::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> SpellPattern {
        SpellPattern::parse(text).expect(text)
    }

    #[test]
    fn scopes_round_trip_and_compare_as_sets() {
        let cast_read = KeyScopes::from_iter([KeyScope::Read, KeyScope::Cast]);
        assert_eq!(cast_read.to_stored(), "cast,read");
        assert_eq!(KeyScopes::from_stored("cast,read"), cast_read);
        assert_eq!(
            KeyScopes::from_stored("cast,publish,read,manage"),
            KeyScopes::ALL
        );
        assert!(cast_read.is_subset_of(KeyScopes::ALL));
        assert!(!KeyScopes::ALL.is_subset_of(cast_read));
        assert!(!cast_read.contains(KeyScope::Manage));
    }

    #[test]
    fn patterns_allow_one_spell_or_every_spell_of_an_owner() {
        assert!(pattern("acme/resize").allows("acme", "resize"));
        assert!(!pattern("acme/resize").allows("acme", "crop"));
        assert!(pattern("acme/*").allows("acme", "crop"));
        assert!(!pattern("acme/*").allows("other", "crop"));
        for bad in [
            "acme", "acme/", "/x", "acme/*x", "Acme/x", "acme/x/y", "acme/**",
        ] {
            assert!(SpellPattern::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn an_allow_list_is_within_another_only_if_covered() {
        let only = |list: &[&str]| AllowedSpells::only(list.iter().map(|p| pattern(p)).collect());
        assert!(only(&["acme/resize"]).is_within(&only(&["acme/*"])));
        assert!(only(&["acme/resize"]).is_within(&AllowedSpells::ANY));
        assert!(!only(&["acme/*"]).is_within(&only(&["acme/resize"])));
        assert!(!AllowedSpells::ANY.is_within(&only(&["acme/*"])));
        assert!(only(&[]).is_within(&only(&["acme/x"])));
        let stored = only(&["acme/resize", "bob/*"]).to_stored();
        assert_eq!(
            AllowedSpells::from_stored(stored.as_deref()),
            only(&["acme/resize", "bob/*"])
        );
    }
}
