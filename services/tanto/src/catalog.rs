//! The mail catalog: which mails an event type sends, to which recipient
//! classes, with which subject and templates.
//!
//! The catalog is data (`deploy/mail/catalog.yaml` by default), read at
//! start-up by the notifiers and the mailer, so an operator adds or changes a
//! mail without a rebuild. docs/catalog.md lists the entries.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::event::EventType;

/// Who a mail is addressed to. The names are stable: they appear in delivery
/// messages, the send history and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientClass {
    /// 全社: the business's company-wide notification accounts.
    CompanyWide,
    /// 商品担当者: accounts in groups linked to a product on the transaction.
    ProductStaff,
    /// 販売先担当者: accounts in groups linked to the transaction's customer.
    CustomerStaff,
    /// 販売先・管理者: the customer's admin user.
    CustomerAdmin,
    /// 販売先・招待者: the customer's invited users.
    CustomerInvitee,
}

impl RecipientClass {
    pub const ALL: [RecipientClass; 5] = [
        RecipientClass::CompanyWide,
        RecipientClass::ProductStaff,
        RecipientClass::CustomerStaff,
        RecipientClass::CustomerAdmin,
        RecipientClass::CustomerInvitee,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecipientClass::CompanyWide => "company_wide",
            RecipientClass::ProductStaff => "product_staff",
            RecipientClass::CustomerStaff => "customer_staff",
            RecipientClass::CustomerAdmin => "customer_admin",
            RecipientClass::CustomerInvitee => "customer_invitee",
        }
    }

    /// The label the platform's screens and mails use.
    pub fn label(self) -> &'static str {
        match self {
            RecipientClass::CompanyWide => "全社",
            RecipientClass::ProductStaff => "商品担当者",
            RecipientClass::CustomerStaff => "販売先担当者",
            RecipientClass::CustomerAdmin => "販売先・管理者",
            RecipientClass::CustomerInvitee => "販売先・招待者",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|class| class.as_str() == raw)
    }
}

impl fmt::Display for RecipientClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a mail speaks to the business's staff or to its customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    Staff,
    Customer,
}

/// Where a catalog entry comes from: the platform's documentation, or this
/// project, which completes the catalog for the event types the platform
/// documents without numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Platform,
    Tanto,
}

/// One catalog entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSpec {
    /// The management number (管理番号), e.g. `5-1-2`.
    pub number: String,
    /// The mail name, e.g. `注文申込`.
    pub name: String,
    pub event_type: EventType,
    pub audience: Audience,
    pub recipients: Vec<RecipientClass>,
    /// A tera template rendering the subject line.
    pub subject: String,
    /// Base name of the `<template>.txt` and `<template>.html` files.
    pub template: String,
    pub origin: Origin,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    mails: Vec<MailSpec>,
}

/// The loaded catalog, in file order.
#[derive(Debug, Clone)]
pub struct Catalog {
    mails: Vec<MailSpec>,
}

impl Catalog {
    /// Reads and checks the catalog file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the mail catalog {}", path.display()))?;
        Self::parse(&text)
            .with_context(|| format!("the mail catalog {} is invalid", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: CatalogFile = serde_yaml_ng::from_str(text)?;
        let catalog = Self { mails: file.mails };
        catalog.check()?;
        Ok(catalog)
    }

    fn check(&self) -> anyhow::Result<()> {
        let mut numbers = BTreeSet::new();
        for mail in &self.mails {
            if !numbers.insert(mail.number.as_str()) {
                bail!("management number {} appears twice", mail.number);
            }
            if mail.recipients.is_empty() {
                bail!("mail {} has no recipient classes", mail.number);
            }
        }
        Ok(())
    }

    pub fn mails(&self) -> &[MailSpec] {
        &self.mails
    }

    /// The mails an event of this type sends, in catalog order.
    pub fn for_event(&self, event_type: EventType) -> impl Iterator<Item = &MailSpec> {
        self.mails
            .iter()
            .filter(move |mail| mail.event_type == event_type)
    }

    pub fn get(&self, number: &str) -> Option<&MailSpec> {
        self.mails.iter().find(|mail| mail.number == number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = r#"
  - number: "5-1-1"
    name: 注文申込
    event_type: order.applied
    audience: customer
    recipients: [customer_admin, customer_invitee]
    subject: "[{{ store_name }} ストア・マイページ]ご注文ありがとうございます"
    template: order_applied_customer
    origin: platform
"#;

    #[test]
    fn the_shipped_catalog_covers_every_event_type() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mail/catalog.yaml");
        let catalog = Catalog::load(&path).expect("shipped catalog");
        for event_type in EventType::ALL {
            assert!(
                catalog.for_event(event_type).next().is_some(),
                "{event_type}"
            );
        }
        let platform: Vec<&str> = catalog
            .mails()
            .iter()
            .filter(|mail| mail.origin == Origin::Platform)
            .map(|mail| mail.number.as_str())
            .collect();
        assert_eq!(
            platform,
            [
                "5-1-1", "5-1-2", "5-1-3", "5-1-4", "6-1-2", "6-1-4", "6-3-2"
            ]
        );
    }

    #[test]
    fn a_duplicate_number_is_refused() {
        let text = format!("mails:{ENTRY}{ENTRY}");
        let err = Catalog::parse(&text).unwrap_err();
        assert_eq!(err.to_string(), "management number 5-1-1 appears twice");
    }

    #[test]
    fn an_unknown_key_or_class_is_refused() {
        let text = format!("mails:{}", ENTRY.replace("origin:", "orign:"));
        assert!(Catalog::parse(&text).is_err());
        let text = format!("mails:{}", ENTRY.replace("customer_admin", "customer_boss"));
        assert!(Catalog::parse(&text).is_err());
    }
}
