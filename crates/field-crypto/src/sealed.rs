//! [`Sealed`]: a ciphertext column value for sqlx (PostgreSQL `bytea`).

use crate::{Context, CryptoError, Keyring, Plaintext, format};

/// An encrypted value as stored in a `bytea` column.
///
/// It can only be made by sealing ([`Sealed::seal`]) or by reading bytes that carry a valid
/// ciphertext header: a plaintext value planted in the column fails to decode
/// ([`CryptoError::PlaintextRejected`]) instead of being served as if it were data. Opening needs
/// the keyring and the row's [`Context`].
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool, keyring: field_crypto::Keyring) -> Result<(), Box<dyn std::error::Error>> {
/// use field_crypto::{Context, Sealed};
/// let ctx = Context::new([7u8; 16], "users", "totp_seed", 42i64.to_be_bytes());
/// let seed = Sealed::seal(&keyring, b"JBSWY3DPEHPK3PXP", &ctx)?;
/// sqlx::query("UPDATE users SET totp_seed = $1 WHERE id = 42").bind(&seed).execute(&pool).await?;
/// let stored: Sealed = sqlx::query_scalar("SELECT totp_seed FROM users WHERE id = 42").fetch_one(&pool).await?;
/// assert_eq!(stored.open(&keyring, &ctx)?.as_bytes(), b"JBSWY3DPEHPK3PXP");
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(Vec<u8>);

impl Sealed {
    /// Seals `plaintext` for `context` with the keyring's primary key.
    ///
    /// # Errors
    /// As [`Keyring::seal`].
    pub fn seal(
        keyring: &Keyring,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Self, CryptoError> {
        keyring.seal(plaintext, context).map(Self)
    }

    /// Opens the value; `context` must be the one it was sealed for.
    ///
    /// # Errors
    /// As [`Keyring::open`].
    pub fn open(&self, keyring: &Keyring, context: &Context) -> Result<Plaintext, CryptoError> {
        keyring.open(&self.0, context)
    }

    /// Accepts stored bytes only if they carry a version-1 ciphertext header.
    ///
    /// # Errors
    /// [`CryptoError::PlaintextRejected`] for anything else.
    pub fn from_stored(bytes: Vec<u8>) -> Result<Self, CryptoError> {
        format::key_id_of(&bytes).map_err(|_| CryptoError::PlaintextRejected)?;
        Ok(Self(bytes))
    }

    /// The stored bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

#[cfg(feature = "sqlx")]
mod sqlx_impls {
    use sqlx::encode::IsNull;
    use sqlx::error::BoxDynError;
    use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
    use sqlx::{Decode, Encode, Postgres, Type};

    use super::Sealed;

    impl Type<Postgres> for Sealed {
        fn type_info() -> PgTypeInfo {
            <Vec<u8> as Type<Postgres>>::type_info()
        }

        fn compatible(ty: &PgTypeInfo) -> bool {
            <Vec<u8> as Type<Postgres>>::compatible(ty)
        }
    }

    impl PgHasArrayType for Sealed {
        fn array_type_info() -> PgTypeInfo {
            <Vec<u8> as PgHasArrayType>::array_type_info()
        }
    }

    impl Encode<'_, Postgres> for Sealed {
        fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
            <&[u8] as Encode<Postgres>>::encode(self.0.as_slice(), buf)
        }
    }

    impl<'r> Decode<'r, Postgres> for Sealed {
        fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
            let bytes = <&[u8] as Decode<Postgres>>::decode(value)?;
            Ok(Self::from_stored(bytes.to_vec())?)
        }
    }
}
