//! The wire names of PEC: daticert `tipo` / `errore`, receipt types,
//! recipient types and the message kinds read from `X-Trasporto` /
//! `X-Ricevuta` (PEC-RULES §2.12, §3).

use std::fmt;
use std::str::FromStr;

/// An unknown wire value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} value {value:?}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($(#[$vm:meta])* $var:ident => $wire:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// Every value, in DTD order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The value as written on the wire.
            pub fn wire(self) -> &'static str {
                match self { $($name::$var => $wire),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            /// Case-insensitive, surrounding white space ignored.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let t = s.trim();
                $(if t.eq_ignore_ascii_case($wire) { return Ok($name::$var); })+
                Err(UnknownValue { what: $what, value: s.to_string() })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.wire())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.wire())
            }
        }
    };
}

wire_enum!(
    /// `postacert@tipo` in daticert.xml; also the `X-Ricevuta` values
    /// (all but `posta-certificata`, which is an `X-Trasporto` value).
    Tipo, "tipo", {
        Accettazione => "accettazione",
        NonAccettazione => "non-accettazione",
        PresaInCarico => "presa-in-carico",
        AvvenutaConsegna => "avvenuta-consegna",
        PostaCertificata => "posta-certificata",
        ErroreConsegna => "errore-consegna",
        PreavvisoErroreConsegna => "preavviso-errore-consegna",
        RilevazioneVirus => "rilevazione-virus",
    }
);

wire_enum!(
    /// `postacert@errore` in daticert.xml.
    Errore, "errore", {
        Nessuno => "nessuno",
        NoDest => "no-dest",
        NoDominio => "no-dominio",
        Virus => "virus",
        Altro => "altro",
    }
);

wire_enum!(
    /// The delivery receipt type the sender asks for (`X-TipoRicevuta`,
    /// daticert `ricevuta@tipo`).
    TipoRicevuta, "ricevuta tipo", {
        Completa => "completa",
        Breve => "breve",
        Sintetica => "sintetica",
    }
);

wire_enum!(
    /// `destinatari@tipo`: the recipient's domain is a PEC domain in the
    /// providers' index (`certificato`) or not (`esterno`).
    TipoDestinatario, "destinatari tipo", {
        Certificato => "certificato",
        Esterno => "esterno",
    }
);

wire_enum!(
    /// `X-Trasporto` values.
    Trasporto, "X-Trasporto", {
        PostaCertificata => "posta-certificata",
        Errore => "errore",
    }
);

impl Default for Errore {
    /// The DTD default.
    fn default() -> Self {
        Self::ALL[0]
    }
}

impl Default for TipoRicevuta {
    /// Absent `X-TipoRicevuta` means `completa` (PEC-RULES §2.2).
    fn default() -> Self {
        Self::ALL[0]
    }
}

/// What a message is, from its PEC marker headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// No PEC marker header: ordinary mail.
    None,
    /// `X-Trasporto: posta-certificata`: a busta di trasporto.
    BustaTrasporto,
    /// `X-Trasporto: errore`: a busta di anomalia.
    BustaAnomalia,
    /// `X-Ricevuta: <tipo>`: a receipt or notice.
    Ricevuta(Tipo),
}

impl MessageKind {
    /// The wire name used by `inspect`: the `X-Ricevuta` value,
    /// `posta-certificata` / `errore` for `X-Trasporto`, `none` otherwise.
    pub fn wire(self) -> &'static str {
        match self {
            MessageKind::None => "none",
            MessageKind::BustaTrasporto => "posta-certificata",
            MessageKind::BustaAnomalia => "errore",
            MessageKind::Ricevuta(t) => t.wire(),
        }
    }

    /// Classify from the raw header values (PEC-RULES §2.12): `X-Ricevuta`
    /// wins over `X-Trasporto`; unknown values count as plain mail.
    pub fn classify(x_trasporto: Option<&str>, x_ricevuta: Option<&str>) -> MessageKind {
        if let Some(Ok(t)) = x_ricevuta.map(str::parse::<Tipo>)
            && t != Tipo::PostaCertificata
        {
            return MessageKind::Ricevuta(t);
        }
        match x_trasporto.map(str::parse::<Trasporto>) {
            Some(Ok(Trasporto::PostaCertificata)) => MessageKind::BustaTrasporto,
            Some(Ok(Trasporto::Errore)) => MessageKind::BustaAnomalia,
            _ => MessageKind::None,
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire())
    }
}

impl serde::Serialize for MessageKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.wire())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_case_insensitively() {
        for t in Tipo::ALL {
            assert_eq!(t.wire().to_uppercase().parse::<Tipo>(), Ok(*t));
        }
        for e in Errore::ALL {
            assert_eq!(format!(" {e} ").parse::<Errore>(), Ok(*e));
        }
        assert!("completissima".parse::<TipoRicevuta>().is_err());
    }

    #[test]
    fn classification_follows_the_marker_headers() {
        assert_eq!(MessageKind::classify(None, None), MessageKind::None);
        assert_eq!(
            MessageKind::classify(Some("Posta-Certificata"), None),
            MessageKind::BustaTrasporto
        );
        assert_eq!(MessageKind::classify(Some("errore"), None).wire(), "errore");
        assert_eq!(
            MessageKind::classify(Some("posta-certificata"), Some("avvenuta-consegna")),
            MessageKind::Ricevuta(Tipo::AvvenutaConsegna)
        );
        assert_eq!(
            MessageKind::classify(Some("bogus"), Some("bogus")),
            MessageKind::None
        );
    }
}
