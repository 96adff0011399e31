//! The routing file that `tanto apply -f FILE` loads: one business's
//! accounts, groups, products and customers (format in docs/routing.md).
//!
//! A file is checked completely before anything is written, and every problem
//! is reported with its place (`groups[0].members[1]`), so a bad file changes
//! nothing and its author can fix all of it in one go.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use serde::Deserialize;

use crate::catalog::Catalog;
use crate::delivery::normalize_address;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    /// Optional in the type so that its absence is reported like every other
    /// problem, with the others, rather than as a parse error.
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub store_name: Option<String>,
    #[serde(default)]
    pub company_wide: Vec<String>,
    #[serde(default)]
    pub disabled_mails: Vec<String>,
    #[serde(default)]
    pub accounts: Vec<AccountEntry>,
    #[serde(default)]
    pub groups: Vec<GroupEntry>,
    #[serde(default)]
    pub products: Vec<ProductEntry>,
    #[serde(default)]
    pub customers: Vec<CustomerEntry>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountEntry {
    pub id: String,
    pub email: String,
    #[serde(default)]
    pub name: String,
    #[serde(default = "active_by_default")]
    pub active: bool,
}

fn active_by_default() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductEntry {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerEntry {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub admin: Option<Person>,
    #[serde(default)]
    pub invitees: Vec<Person>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    pub email: String,
    #[serde(default)]
    pub name: String,
}

/// A routing file that passed every check: its tenant and store name are
/// known and every reference resolves within the file.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRouting {
    pub tenant: String,
    pub store_name: String,
    pub file: RoutingFile,
}

/// Everything wrong with a routing file, one line per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct InvalidRouting {
    pub problems: Vec<String>,
}

impl RoutingFile {
    /// Parses the YAML text; a syntax or shape error names its line.
    pub fn parse(text: &str) -> Result<Self, InvalidRouting> {
        serde_yaml_ng::from_str(text).map_err(|err| InvalidRouting {
            problems: vec![err.to_string()],
        })
    }

    /// Checks the whole file against itself and the catalog.
    pub fn validate(self, catalog: &Catalog) -> Result<ValidRouting, InvalidRouting> {
        let mut check = Checker::default();
        let tenant = check.required("tenant", self.tenant.as_deref());
        let store_name = check.required("store_name", self.store_name.as_deref());
        let accounts = check.accounts(&self.accounts);
        let groups = check.unique_ids("groups", self.groups.iter().map(|g| g.id.as_str()));
        check.references("company_wide", &self.company_wide, &accounts, "account");
        check.disabled_mails(&self.disabled_mails, catalog);
        for (i, group) in self.groups.iter().enumerate() {
            check.references(
                &format!("groups[{i}].members"),
                &group.members,
                &accounts,
                "account",
            );
        }
        check.unique_ids("products", self.products.iter().map(|p| p.id.as_str()));
        for (i, product) in self.products.iter().enumerate() {
            check.references(
                &format!("products[{i}].groups"),
                &product.groups,
                &groups,
                "group",
            );
        }
        check.customers(&self.customers, &groups);
        match (check.problems.is_empty(), tenant, store_name) {
            (true, Some(tenant), Some(store_name)) => Ok(ValidRouting {
                tenant,
                store_name,
                file: self,
            }),
            _ => Err(InvalidRouting {
                problems: check.problems,
            }),
        }
    }
}

#[derive(Default)]
struct Checker {
    problems: Vec<String>,
}

impl Checker {
    fn problem(&mut self, place: &str, message: impl AsRef<str>) {
        self.problems.push(format!("{place}: {}", message.as_ref()));
    }

    fn required(&mut self, place: &str, value: Option<&str>) -> Option<String> {
        match value.map(str::trim) {
            Some(value) if !value.is_empty() => Some(value.to_string()),
            _ => {
                self.problem(place, "missing");
                None
            }
        }
    }

    /// Checks that ids are present and unique; returns the set of them.
    fn unique_ids<'a>(
        &mut self,
        list: &str,
        ids: impl Iterator<Item = &'a str>,
    ) -> BTreeSet<&'a str> {
        let mut first_seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, id) in ids.enumerate() {
            if id.trim().is_empty() {
                self.problem(&format!("{list}[{i}].id"), "missing");
            } else if let Some(first) = first_seen.get(id) {
                self.problem(
                    &format!("{list}[{i}].id"),
                    format!("duplicate id '{id}' (first at {list}[{first}])"),
                );
            } else {
                first_seen.insert(id, i);
            }
        }
        first_seen.into_keys().collect()
    }

    fn accounts<'a>(&mut self, accounts: &'a [AccountEntry]) -> BTreeSet<&'a str> {
        for (i, account) in accounts.iter().enumerate() {
            self.address(&format!("accounts[{i}].email"), &account.email);
        }
        self.unique_ids("accounts", accounts.iter().map(|a| a.id.as_str()))
    }

    fn address(&mut self, place: &str, address: &str) {
        if lettre::Address::from_str(address.trim()).is_err() {
            self.problem(place, format!("'{address}' is not a mail address"));
        }
    }

    fn references(&mut self, place: &str, ids: &[String], known: &BTreeSet<&str>, kind: &str) {
        let mut seen = BTreeSet::new();
        for (i, id) in ids.iter().enumerate() {
            if !known.contains(id.as_str()) {
                self.problem(&format!("{place}[{i}]"), format!("unknown {kind} '{id}'"));
            } else if !seen.insert(id) {
                self.problem(&format!("{place}[{i}]"), format!("'{id}' is listed twice"));
            }
        }
    }

    fn disabled_mails(&mut self, numbers: &[String], catalog: &Catalog) {
        for (i, number) in numbers.iter().enumerate() {
            if catalog.get(number).is_none() {
                self.problem(
                    &format!("disabled_mails[{i}]"),
                    format!("no mail numbered '{number}' in the catalog"),
                );
            }
        }
    }

    fn customers(&mut self, customers: &[CustomerEntry], groups: &BTreeSet<&str>) {
        self.unique_ids("customers", customers.iter().map(|c| c.id.as_str()));
        for (i, customer) in customers.iter().enumerate() {
            let place = format!("customers[{i}]");
            self.references(
                &format!("{place}.groups"),
                &customer.groups,
                groups,
                "group",
            );
            if let Some(admin) = &customer.admin {
                self.address(&format!("{place}.admin.email"), &admin.email);
            }
            let mut invitees = BTreeSet::new();
            for (j, invitee) in customer.invitees.iter().enumerate() {
                let invitee_place = format!("{place}.invitees[{j}].email");
                self.address(&invitee_place, &invitee.email);
                if !invitees.insert(normalize_address(&invitee.email)) {
                    self.problem(
                        &invitee_place,
                        format!("'{}' is listed twice", invitee.email),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
tenant: acme
store_name: ACME
company_wide: [acc-ops]
disabled_mails: []
accounts:
  - { id: acc-ops, email: ops@acme.example, name: 運用チーム }
  - { id: acc-tanaka, email: tanaka@acme.example, active: false }
groups:
  - { id: solution-dept, name: ソリューション商品担当部門, members: [acc-tanaka, acc-ops] }
products:
  - { id: P-100, name: クラウドバックアップ Pro, groups: [solution-dept] }
customers:
  - id: C-1001
    name: サンプル株式会社
    groups: []
    admin: { email: admin@sample.example, name: 山田 太郎 }
    invitees: [ { email: buyer@sample.example, name: 佐藤 花子 } ]
"#;

    fn catalog() -> Catalog {
        Catalog::parse(
            r#"
mails:
  - { number: "5-1-2", name: 注文申込, event_type: order.applied, audience: staff,
      recipients: [company_wide], subject: s, template: t, origin: platform }
"#,
        )
        .expect("catalog")
    }

    fn problems(text: &str) -> Vec<String> {
        match RoutingFile::parse(text) {
            Err(err) => err.problems,
            Ok(file) => file
                .validate(&catalog())
                .map(|_| Vec::new())
                .unwrap_or_else(|e| e.problems),
        }
    }

    #[test]
    fn the_example_file_is_valid() {
        let valid = RoutingFile::parse(GOOD)
            .expect("parse")
            .validate(&catalog())
            .expect("valid");
        assert_eq!(valid.tenant, "acme");
        assert!(!valid.file.accounts[1].active);
        assert!(valid.file.accounts[0].active);
    }

    #[test]
    fn a_missing_tenant_is_named() {
        assert_eq!(
            problems(&GOOD.replace("tenant: acme", "")),
            ["tenant: missing"]
        );
    }

    #[test]
    fn an_unknown_reference_is_named_with_its_place() {
        let text = GOOD.replace(
            "members: [acc-tanaka, acc-ops]",
            "members: [acc-tanaka, acc-nobody]",
        );
        assert_eq!(
            problems(&text),
            ["groups[0].members[1]: unknown account 'acc-nobody'"]
        );
        let text = GOOD.replace("groups: [solution-dept]", "groups: [sales]");
        assert_eq!(
            problems(&text),
            ["products[0].groups[0]: unknown group 'sales'"]
        );
        let text = GOOD.replace("company_wide: [acc-ops]", "company_wide: [acc-x]");
        assert_eq!(
            problems(&text),
            ["company_wide[0]: unknown account 'acc-x'"]
        );
    }

    #[test]
    fn a_malformed_address_is_named() {
        let text = GOOD.replace("buyer@sample.example", "buyer-at-sample");
        assert_eq!(
            problems(&text),
            ["customers[0].invitees[0].email: 'buyer-at-sample' is not a mail address"]
        );
    }

    #[test]
    fn a_duplicate_id_names_both_places() {
        let text = GOOD.replace("id: acc-tanaka", "id: acc-ops");
        assert_eq!(
            problems(&text),
            [
                "accounts[1].id: duplicate id 'acc-ops' (first at accounts[0])",
                // The renamed account's old id is now unknown where it is used.
                "groups[0].members[0]: unknown account 'acc-tanaka'",
            ]
        );
    }

    #[test]
    fn an_unknown_mail_number_or_key_is_refused() {
        let text = GOOD.replace("disabled_mails: []", "disabled_mails: [9-9-9]");
        assert_eq!(
            problems(&text),
            ["disabled_mails[0]: no mail numbered '9-9-9' in the catalog"]
        );
        let text = GOOD.replace("store_name: ACME", "store_name: ACME\nstore: typo");
        assert!(
            problems(&text)[0].contains("unknown field `store`"),
            "{:?}",
            problems(&text)
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = GOOD
            .replace("tenant: acme", "")
            .replace("ops@acme.example", "ops");
        assert_eq!(problems(&text).len(), 2);
    }
}
