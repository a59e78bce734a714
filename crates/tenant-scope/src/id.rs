//! Validated identifiers for tenants and actors.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::error::IdError;

/// Parses the one textual form we accept: 36 characters, lowercase or uppercase hex, hyphenated.
///
/// `uuid::Uuid::parse_str` also accepts the simple, braced and URN forms; accepting several
/// spellings of the same identifier invites bypasses of string comparisons elsewhere (caches,
/// logs, allowlists), so only the canonical hyphenated form is taken. The nil UUID is refused:
/// it is the typical value of an uninitialised field, never a real tenant.
fn parse_canonical(input: &str) -> Result<Uuid, IdError> {
    if input.len() != 36 {
        return Err(IdError::Malformed);
    }
    let bytes = input.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let hyphen = matches!(i, 8 | 13 | 18 | 23);
        if hyphen != (*b == b'-') || (!hyphen && !b.is_ascii_hexdigit()) {
            return Err(IdError::Malformed);
        }
    }
    let uuid = Uuid::try_parse(input).map_err(|_| IdError::Malformed)?;
    if uuid.is_nil() {
        return Err(IdError::Nil);
    }
    Ok(uuid)
}

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize))]
        #[cfg_attr(feature = "serde", serde(transparent))]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps a UUID, refusing the nil UUID.
            ///
            /// # Errors
            /// [`IdError::Nil`] for the nil UUID.
            pub fn from_uuid(uuid: Uuid) -> Result<Self, IdError> {
                if uuid.is_nil() {
                    Err(IdError::Nil)
                } else {
                    Ok(Self(uuid))
                }
            }

            /// A new random (version 4) identifier.
            #[must_use]
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            /// The UUID inside.
            #[must_use]
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_canonical(s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Always lowercase and hyphenated: the form PostgreSQL prints for `uuid`.
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.hyphenated())
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl TryFrom<Uuid> for $name {
            type Error = IdError;

            fn try_from(uuid: Uuid) -> Result<Self, Self::Error> {
                Self::from_uuid(uuid)
            }
        }

        #[cfg(feature = "serde")]
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

uuid_id! {
    /// The identifier of a tenant: a non-nil UUID in canonical hyphenated form.
    ///
    /// ```
    /// use tenant_scope::TenantId;
    /// let id: TenantId = "7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b11".parse()?;
    /// assert_eq!(id.to_string(), "7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b11");
    /// assert!("not-a-uuid".parse::<TenantId>().is_err());
    /// assert!("00000000-0000-0000-0000-000000000000".parse::<TenantId>().is_err());
    /// # Ok::<(), tenant_scope::IdError>(())
    /// ```
    TenantId
}

uuid_id! {
    /// The identifier of an actor (a user, a staff member, an agent or a system job).
    ActorId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_canonical_form_in_either_case_and_prints_lowercase() {
        let id: TenantId = "7F1C1F5E-8D2A-4C55-9A59-1F3F2C6A0B11".parse().unwrap();
        assert_eq!(id.to_string(), "7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b11");
    }

    #[test]
    fn rejects_alternative_spellings_and_junk() {
        for bad in [
            "",
            "not-a-uuid",
            "7f1c1f5e8d2a4c559a591f3f2c6a0b11",
            "{7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b11}",
            "urn:uuid:7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b11",
            " 7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b11",
            "7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b1g",
            "7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b11\n",
            "7f1c1f5e-8d2a-4c55+9a59-1f3f2c6a0b11",
            "7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b1１",
        ] {
            assert_eq!(bad.parse::<TenantId>(), Err(IdError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn refuses_the_nil_uuid() {
        assert_eq!(
            "00000000-0000-0000-0000-000000000000".parse::<TenantId>(),
            Err(IdError::Nil)
        );
        assert_eq!(ActorId::from_uuid(Uuid::nil()), Err(IdError::Nil));
    }

    #[test]
    fn display_round_trips() {
        let id = TenantId::new_random();
        assert_eq!(id.to_string().parse::<TenantId>().unwrap(), id);
    }
}
