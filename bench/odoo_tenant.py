"""An Odoo-shaped tenant database, and a client that keeps writing to it, for the migration benchmark and fault test.

generate() builds, in an empty database and as the connected role (so the role owns every object, as a tenant's
role does), what a migration has to carry: ~300 small model tables named and shaped like Odoo's (serial id, audit
columns, jsonb translated names, foreign keys to res_partner/res_company/res_users), the few large tables that
hold most of a real tenant's bytes (account_move_line, stock_move, mail_message, ir_attachment with bytea
content), many2many relation tables with composite keys, and ir.sequence's standalone sequences, advanced. Every
table has a primary key (logical replication needs a replica identity); there are no large objects. Rows are made
server-side with INSERT ... SELECT FROM generate_series, in batches until pg_database_size reaches the target.

TenantWriter commits one row every interval through PgBouncer, as an Odoo worker keeps writing while its database
moves, and reports what got committed and the longest pause.

Usage: bench/odoo_tenant.py --host H --port P --dbname D --user U --password-env VAR --size-mb N
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

MB = 1024 * 1024

# -- the schema ----------------------------------------------------------------------------------------------------

# Rows of the small tables the others point at; foreign key values are drawn from 1..count.
COUNTS = {
    "res_company": 3,
    "res_users": 20,
    "res_partner": 500,
    "res_currency": 5,
    "res_country": 50,
    "uom_uom": 20,
    "product_template": 200,
    "product_product": 200,
    "account_account": 80,
    "account_journal": 8,
    "account_tax": 12,
    "stock_location": 30,
    "stock_picking_type": 6,
    "stock_picking": 60,
    "mail_message_subtype": 10,
    "ir_sequence": 10,
}
SEQUENCES = 10  # ir_sequence_001..010, ir.sequence's "standard" implementation: one PostgreSQL sequence per record

# Odoo's own model tables, past the ones in COUNTS; x_model_NNN (custom models) make up the rest of SMALL_TABLES.
ODOO_TABLE_NAMES = """
res_lang res_groups res_partner_category res_partner_bank res_bank res_country_state res_partner_industry
res_currency_rate uom_category product_category product_pricelist product_pricelist_item product_attribute
product_attribute_value product_supplierinfo account_tax_group account_tax_repartition_line account_payment_term
account_payment_term_line account_fiscal_position account_fiscal_position_tax account_analytic_account
account_analytic_plan account_analytic_line account_payment account_payment_method account_bank_statement
account_bank_statement_line account_reconcile_model account_full_reconcile account_partial_reconcile
account_group account_incoterms account_cash_rounding sale_order sale_order_line sale_order_template
purchase_order purchase_order_line stock_warehouse stock_picking stock_quant stock_lot stock_route stock_rule
stock_move_line stock_package_type stock_quant_package stock_scrap stock_inventory_line crm_team crm_lead
crm_stage crm_tag crm_lost_reason hr_employee hr_department hr_job hr_contract hr_leave hr_leave_type hr_expense
hr_attendance project_project project_task project_task_type project_tags mail_activity mail_activity_type
mail_followers mail_template mail_mail mail_alias mail_message_subtype mail_tracking_value mail_notification
discuss_channel discuss_channel_member ir_model ir_model_fields ir_model_data ir_ui_view ir_ui_menu
ir_act_window ir_act_server ir_cron ir_config_parameter ir_sequence ir_sequence_date_range ir_rule
ir_mail_server ir_module_module ir_module_category ir_default ir_filters ir_asset website website_page
website_menu utm_campaign utm_medium utm_source calendar_event calendar_attendee resource_calendar
resource_calendar_attendance resource_resource payment_provider payment_transaction payment_token
fetchmail_server bus_bus digest_digest base_import_import rating_rating portal_wizard sms_sms snailmail_letter
iap_account auth_totp_device
"""
ODOO_TABLES = ODOO_TABLE_NAMES.split()
CORE = tuple(COUNTS)  # res_company, res_users, ... first: every other table points at them
ODOO_MODELS = list(CORE) + [t for t in ODOO_TABLES if t not in COUNTS]
SMALL_TABLES = 300

# Extra columns of the small tables the large ones point at: (column, type, value expression over g, the row number).
EXTRA = {
    "res_company": [
        ("currency_id", "integer REFERENCES res_currency", "1"),
        ("partner_id", "integer REFERENCES res_partner", "g"),
        ("email", "varchar", "'info@company' || g || '.example'"),
    ],
    "res_users": [
        ("login", "varchar NOT NULL UNIQUE", "'user' || g || '@tenant.example'"),
        ("partner_id", "integer NOT NULL REFERENCES res_partner", "10 + g"),
        ("password", "varchar", "'$pbkdf2-sha512$600000$' || md5(g::text)"),
        ("share", "boolean", "g > 15"),
    ],
    "res_partner": [
        ("email", "varchar", "'partner' || g || '@customer.example'"),
        ("phone", "varchar", "'+32 2 ' || lpad((g * 7919 % 1000000)::text, 6, '0')"),
        ("street", "varchar", "g || ' Rue de la Loi'"),
        ("city", "varchar", "(ARRAY['Brussels', 'Lyon', 'Porto', 'Leuven'])[1 + g % 4]"),
        ("zip", "varchar", "(1000 + g % 9000)::text"),
        ("country_id", "integer REFERENCES res_country ON DELETE SET NULL", "1 + g % 50"),
        ("parent_id", "integer REFERENCES res_partner ON DELETE SET NULL", "CASE WHEN g > 100 THEN 1 + g % 100 END"),
        ("is_company", "boolean", "g <= 100"),
        ("vat", "varchar", "CASE WHEN g <= 100 THEN 'BE0' || (400000000 + g) END"),
    ],
    "product_product": [
        ("product_tmpl_id", "integer NOT NULL REFERENCES product_template ON DELETE CASCADE", "g"),
        ("default_code", "varchar", "'P' || lpad(g::text, 5, '0')"),
        ("barcode", "varchar UNIQUE", "(5400000000000 + g)::text"),
    ],
    "product_template": [
        ("list_price", "numeric", "round((random() * 500)::numeric, 2)"),
        ("detailed_type", "varchar", "(ARRAY['product', 'consu', 'service'])[1 + g % 3]"),
        ("uom_id", "integer REFERENCES uom_uom", "1 + g % 20"),
    ],
    "account_account": [
        ("code", "varchar(64) NOT NULL", "(100000 + g * 10)::text"),
        ("account_type", "varchar", "(ARRAY['asset_receivable', 'liability_payable', 'income', 'expense'])[1 + g % 4]"),
        ("reconcile", "boolean", "g % 4 < 2"),
        ("currency_id", "integer REFERENCES res_currency ON DELETE SET NULL", "NULL::integer"),
    ],
    "account_journal": [
        ("code", "varchar(5) NOT NULL", "'J' || g"),
        ("type", "varchar NOT NULL", "(ARRAY['sale', 'purchase', 'bank', 'cash', 'general'])[1 + g % 5]"),
        ("default_account_id", "integer REFERENCES account_account", "g"),
    ],
    "account_tax": [
        ("amount", "numeric NOT NULL", "(ARRAY[21, 12, 6, 0])[1 + g % 4]"),
        ("amount_type", "varchar NOT NULL", "'percent'"),
        ("type_tax_use", "varchar NOT NULL", "(ARRAY['sale', 'purchase'])[1 + g % 2]"),
    ],
    "stock_location": [
        ("complete_name", "varchar", "'WH/Stock/Shelf ' || g"),
        ("usage", "varchar NOT NULL", "(ARRAY['internal', 'supplier', 'customer', 'inventory'])[1 + g % 4]"),
        ("location_id", "integer REFERENCES stock_location ON DELETE CASCADE", "CASE WHEN g > 1 THEN 1 END"),
    ],
    "stock_picking": [
        ("picking_type_id", "integer REFERENCES stock_picking_type", "1 + g % 6"),
        ("location_id", "integer REFERENCES stock_location", "1 + g % 30"),
        ("scheduled_date", "timestamp", "timestamp '2024-01-01' + g * interval '1 day'"),
    ],
    "ir_sequence": [
        ("code", "varchar", "'seq.code.' || g"),
        ("implementation", "varchar NOT NULL", "'standard'"),
        ("prefix", "varchar", "'SEQ' || g || '/%(year)s/'"),
        ("padding", "integer NOT NULL", "5"),
        ("number_increment", "integer NOT NULL", "1"),
        ("number_next", "integer NOT NULL", "1"),
    ],
    "res_currency": [
        ("symbol", "varchar NOT NULL", "(ARRAY['€', '$', '£', 'CHF', '¥'])[g]"),
        ("rounding", "numeric", "0.01"),
    ],
    "res_country": [("code", "varchar(2)", "chr(65 + g / 26) || chr(65 + g % 26)")],
}

AUDIT = (
    "create_uid integer, create_date timestamp without time zone,"
    " write_uid integer, write_date timestamp without time zone"
)
AUDIT_VALUES = (
    "1 + mod(g, {users}), timestamp '2023-01-01' + random() * interval '700 days',"
    " 1 + mod(g, {users}), timestamp '2024-12-01' + random() * interval '30 days'"
).format(users=COUNTS["res_users"])


def _audit_fks(table: str) -> list[tuple[str, str, str, str]]:
    # As Odoo declares create_uid/write_uid: many2one to res.users, ondelete set null.
    return [(table, column, "res_users", "SET NULL") for column in ("create_uid", "write_uid")]


@dataclass
class Schema:
    """What the DDL made, for the fill and the foreign keys added once the rows are in."""

    small: dict[str, int] = field(default_factory=dict)  # table -> rows
    inserts: dict[str, sql.Composed] = field(default_factory=dict)
    fks: list[tuple[str, str, str, str]] = field(default_factory=list)  # (table, column, target, on delete)
    indexes: list[sql.Composed] = field(default_factory=list)


def _small_table(schema: Schema, table: str, i: int) -> sql.Composed:
    """DDL of one small model table; its column mix varies with i so the 300 are not all alike."""
    rows = COUNTS.get(table, 3 + (i * 7) % 38)
    translated = i % 3 == 0 or table in ("product_template", "account_tax", "uom_uom", "res_country")
    columns = [
        ("name", "jsonb" if translated else "varchar", _name_value(table, translated)),
        ("active", "boolean DEFAULT true", "g % 17 <> 0"),
        ("sequence", "integer", "g * 10"),
    ]
    fks = _audit_fks(table)
    if table != "res_company":
        columns.append(("company_id", "integer", f"1 + g % {COUNTS['res_company']}"))
        fks.append((table, "company_id", "res_company", "SET NULL"))
    if i % 2 == 0 and table not in ("res_partner", "res_users", "res_company"):
        columns.append(("partner_id", "integer", f"1 + floor(random() * {COUNTS['res_partner']})::integer"))
        fks.append((table, "partner_id", "res_partner", "SET NULL"))
    if i % 3 == 1:
        columns.append(("note", "text", "'<p>' || md5(random()::text) || '</p>'"))
    if i % 2 == 1:
        columns.append(("amount", "numeric", "round((random() * 10000)::numeric, 2)"))
    if i % 4 == 0:
        columns.append(("state", "varchar", "(ARRAY['draft', 'posted', 'cancel'])[1 + g % 3]"))
    if i % 5 == 0:
        columns.append(("properties", "jsonb", "jsonb_build_object('color', g % 12, 'tag', md5(g::text))"))
    for column, coltype, value in EXTRA.get(table, ()):
        if " REFERENCES " in coltype:  # added after the fill, as pg_restore does: no per-row trigger checks
            coltype, target = coltype.split(" REFERENCES ")
            target, _, ondelete = target.partition(" ON DELETE ")
            fks.append((table, column, target, ondelete or "RESTRICT"))
        columns.append((column, coltype, value))
    schema.small[table] = rows
    schema.fks.extend(fks)
    if i % 4 == 0 and table != "res_company":
        schema.indexes.append(_index(table, "company_id"))
    names = [sql.Identifier(c) for c, _, _ in columns]
    schema.inserts[table] = sql.SQL(
        "INSERT INTO {} ({}, create_uid, create_date, write_uid, write_date) SELECT {}, {}"
        " FROM generate_series(1, {}) g"
    ).format(
        sql.Identifier(table),
        sql.SQL(", ").join(names),
        sql.SQL(", ").join(sql.SQL(v) for _, _, v in columns),  # the module's own expressions
        sql.SQL(AUDIT_VALUES),
        sql.Literal(rows),
    )
    return sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, {}, {})").format(
        sql.Identifier(table),
        sql.SQL(", ").join(sql.SQL("{} {}").format(n, sql.SQL(t)) for n, (_, t, _) in zip(names, columns, strict=True)),
        sql.SQL(AUDIT),
    )


def _name_value(table: str, translated: bool) -> str:
    label = table.replace("_", " ").title()
    if translated:  # Odoo 16+ keeps translatable fields as jsonb {lang: value}
        return f"jsonb_build_object('en_US', '{label} ' || g, 'fr_FR', '{label} (fr) ' || g, 'nl_BE', '{label} ' || g)"
    return f"'{label} ' || g"


def _index(table: str, *columns: str) -> sql.Composed:
    return sql.SQL("CREATE INDEX {} ON {} ({})").format(
        sql.Identifier(f"{table}__{'_'.join(columns)}_index"),  # Odoo's index naming
        sql.Identifier(table),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
    )


# The large tables, their secondary indexes (created before the fill, so sizes are measured with them) and
# foreign keys (added after). Ids are given explicitly (g) so the batches can point at each other; setval follows.
LARGE_DDL = f"""
CREATE TABLE account_move (
    id serial PRIMARY KEY, name varchar, ref varchar, date date NOT NULL, move_type varchar NOT NULL,
    state varchar NOT NULL, journal_id integer NOT NULL, partner_id integer, currency_id integer NOT NULL,
    company_id integer NOT NULL, amount_untaxed numeric, amount_tax numeric, amount_total numeric,
    amount_residual numeric, invoice_date date, invoice_date_due date, payment_state varchar, narration text,
    payment_reference varchar, sequence_prefix varchar, sequence_number integer, {AUDIT});
CREATE TABLE account_move_line (
    id serial PRIMARY KEY, move_id integer NOT NULL, move_name varchar, date date, ref varchar,
    parent_state varchar, journal_id integer, company_id integer, company_currency_id integer,
    account_id integer, partner_id integer, product_id integer, product_uom_id integer, name varchar,
    display_type varchar NOT NULL, sequence integer, quantity numeric, price_unit numeric, discount numeric,
    price_subtotal numeric, price_total numeric, debit numeric, credit numeric, balance numeric,
    amount_currency numeric, amount_residual numeric, amount_residual_currency numeric, currency_id integer NOT NULL,
    reconciled boolean, blocked boolean, date_maturity date, tax_line_id integer, matching_number varchar,
    analytic_distribution jsonb, {AUDIT});
CREATE TABLE account_move_line_account_tax_rel (
    account_move_line_id integer NOT NULL, account_tax_id integer NOT NULL,
    PRIMARY KEY (account_move_line_id, account_tax_id));
CREATE TABLE stock_move (
    id serial PRIMARY KEY, name varchar NOT NULL, reference varchar, origin varchar, sequence integer,
    priority varchar, state varchar, date timestamp NOT NULL, date_deadline timestamp, company_id integer NOT NULL,
    product_id integer NOT NULL, product_uom integer NOT NULL, product_uom_qty numeric NOT NULL, quantity numeric,
    product_qty numeric, location_id integer NOT NULL, location_dest_id integer NOT NULL, partner_id integer,
    picking_id integer, picking_type_id integer, procure_method varchar NOT NULL, price_unit double precision,
    description_picking text, {AUDIT});
CREATE TABLE mail_message (
    id serial PRIMARY KEY, subject varchar, date timestamp, body text, model varchar, res_id integer,
    record_name varchar, message_type varchar NOT NULL, subtype_id integer, author_id integer,
    email_from varchar, parent_id integer, message_id varchar, reply_to varchar, is_internal boolean,
    {AUDIT});
CREATE TABLE mail_message_res_partner_rel (
    mail_message_id integer NOT NULL, res_partner_id integer NOT NULL,
    PRIMARY KEY (mail_message_id, res_partner_id));
CREATE TABLE ir_attachment (
    id serial PRIMARY KEY, name varchar NOT NULL, description text, res_model varchar, res_field varchar,
    res_id integer, company_id integer, type varchar NOT NULL, url varchar(1024), public boolean,
    access_token varchar, db_datas bytea, store_fname varchar, file_size integer, checksum varchar(40),
    mimetype varchar, index_content text, {AUDIT});
"""
LARGE_INDEXES = {
    "account_move": [("date",), ("journal_id",), ("partner_id",), ("state",)],
    "account_move_line": [("move_id",), ("account_id",), ("partner_id",), ("date",), ("journal_id",), ("product_id",)],
    "account_move_line_account_tax_rel": [("account_tax_id", "account_move_line_id")],
    "stock_move": [("product_id",), ("location_id",), ("location_dest_id",), ("picking_id",), ("state",), ("date",)],
    "mail_message": [("model", "res_id"), ("author_id",), ("parent_id",), ("date",), ("message_type",)],
    "mail_message_res_partner_rel": [("res_partner_id", "mail_message_id")],
    "ir_attachment": [("res_model", "res_id"), ("checksum",), ("store_fname",), ("company_id",)],
}
LARGE_FKS = [
    ("account_move", "journal_id", "account_journal", "RESTRICT"),
    ("account_move", "partner_id", "res_partner", "RESTRICT"),
    ("account_move", "currency_id", "res_currency", "RESTRICT"),
    ("account_move", "company_id", "res_company", "RESTRICT"),
    ("account_move_line", "move_id", "account_move", "CASCADE"),
    ("account_move_line", "account_id", "account_account", "RESTRICT"),
    ("account_move_line", "partner_id", "res_partner", "RESTRICT"),
    ("account_move_line", "journal_id", "account_journal", "SET NULL"),
    ("account_move_line", "product_id", "product_product", "RESTRICT"),
    ("account_move_line", "currency_id", "res_currency", "RESTRICT"),
    ("account_move_line", "tax_line_id", "account_tax", "RESTRICT"),
    ("account_move_line_account_tax_rel", "account_move_line_id", "account_move_line", "CASCADE"),
    ("account_move_line_account_tax_rel", "account_tax_id", "account_tax", "CASCADE"),
    ("stock_move", "product_id", "product_product", "RESTRICT"),
    ("stock_move", "location_id", "stock_location", "RESTRICT"),
    ("stock_move", "location_dest_id", "stock_location", "RESTRICT"),
    ("stock_move", "picking_id", "stock_picking", "SET NULL"),
    ("stock_move", "company_id", "res_company", "RESTRICT"),
    ("stock_move", "partner_id", "res_partner", "SET NULL"),
    ("mail_message", "author_id", "res_partner", "SET NULL"),
    ("mail_message", "parent_id", "mail_message", "SET NULL"),
    ("mail_message", "subtype_id", "mail_message_subtype", "SET NULL"),
    ("mail_message_res_partner_rel", "mail_message_id", "mail_message", "CASCADE"),
    ("mail_message_res_partner_rel", "res_partner_id", "res_partner", "CASCADE"),
    ("ir_attachment", "company_id", "res_company", "SET NULL"),
] + [
    fk
    for table in ("account_move", "account_move_line", "stock_move", "mail_message", "ir_attachment")
    for fk in _audit_fks(table)
]

# -- the fill of the large tables -----------------------------------------------------------------------------------
# Each statement takes %(lo)s::integer..%(hi)s::integer, the batch's ids (account_move_line: line ids; 4 lines a move).

ACCOUNTING = [
    """INSERT INTO account_move (id, name, ref, date, move_type, state, journal_id, partner_id, currency_id,
        company_id, amount_untaxed, amount_tax, amount_total, amount_residual, invoice_date, invoice_date_due,
        payment_state, narration, payment_reference, sequence_prefix, sequence_number,
        create_uid, create_date, write_uid, write_date)
    SELECT g, 'INV/2024/' || lpad(g::text, 7, '0'), 'SO' || lpad((g * 7 %% 99991)::text, 5, '0'), d, 'out_invoice',
        (ARRAY['posted', 'posted', 'posted', 'draft', 'cancel'])[1 + g %% 5], 1 + g %% {journals},
        1 + floor(random() * {partners})::integer, 1, 1 + g %% {companies}, a, round(a * 0.21, 2),
        round(a * 1.21, 2), CASE WHEN g %% 3 = 0 THEN round(a * 1.21, 2) ELSE 0 END, d, d + 30,
        (ARRAY['paid', 'not_paid', 'partial', 'in_payment'])[1 + g %% 4],
        CASE WHEN g %% 7 = 0 THEN '<p>' || md5(g::text) || '</p>' END, '+++' || lpad(g::text, 12, '0') || '+++',
        'INV/2024/', g, {audit}
    FROM (SELECT g, date '2023-01-01' + (random() * 700)::integer AS d, round((random() * 20000)::numeric, 2) AS a
          FROM generate_series((%(lo)s::integer + 3) / 4, (%(hi)s::integer + 3) / 4) g) m""",
    """INSERT INTO account_move_line (id, move_id, move_name, date, ref, parent_state, journal_id, company_id,
        company_currency_id, account_id, partner_id, product_id, product_uom_id, name, display_type, sequence,
        quantity, price_unit, discount, price_subtotal, price_total, debit, credit, balance, amount_currency,
        amount_residual, amount_residual_currency, currency_id, reconciled, blocked, date_maturity, tax_line_id,
        matching_number, analytic_distribution, create_uid, create_date, write_uid, write_date)
    SELECT g, (g + 3) / 4, 'INV/2024/' || lpad(((g + 3) / 4)::text, 7, '0'), d, 'SO' || (g %% 99991), 'posted',
        1 + g %% {journals}, 1 + g %% {companies}, 1,
        1 + floor(random() * {accounts})::integer, 1 + floor(random() * {partners})::integer,
        CASE WHEN g %% 4 <> 0 THEN 1 + floor(random() * {products})::integer END, 1,
        'Line ' || g || ' ' || substr(md5(g::text), 1, 1 + g %% 24),
        CASE WHEN g %% 4 = 0 THEN 'payment_term' ELSE 'product' END, 10 + g %% 4, q, a, 0, round(q * a, 2),
        round(q * a * 1.21, 2), CASE WHEN g %% 2 = 0 THEN round(q * a, 2) ELSE 0 END,
        CASE WHEN g %% 2 = 1 THEN round(q * a, 2) ELSE 0 END, CASE WHEN g %% 2 = 0 THEN 1 ELSE -1 END * round(q * a, 2),
        round(q * a, 2), CASE WHEN g %% 3 = 0 THEN round(q * a, 2) ELSE 0 END, 0, 1, g %% 3 <> 0, false, d + 30,
        CASE WHEN g %% 4 = 3 THEN 1 + g %% {taxes} END, CASE WHEN g %% 3 <> 0 THEN 'P' || (g / 3) END,
        CASE WHEN g %% 5 = 0 THEN jsonb_build_object((1 + g %% 40)::text, 100.0) END, {audit}
    FROM (SELECT g, date '2023-01-01' + (random() * 700)::integer AS d, round((random() * 20)::numeric, 2) AS q,
                 round((random() * 500)::numeric, 2) AS a
          FROM generate_series(%(lo)s::integer, %(hi)s::integer) g) l""",
    """INSERT INTO account_move_line_account_tax_rel (account_move_line_id, account_tax_id)
    SELECT g, 1 + g %% {taxes} FROM generate_series(%(lo)s::integer, %(hi)s::integer) g WHERE g %% 4 <> 0
    UNION ALL
    SELECT g, 1 + (g + 1) %% {taxes} FROM generate_series(%(lo)s::integer, %(hi)s::integer) g WHERE g %% 8 = 1""",
]
STOCK = [
    """INSERT INTO stock_move (id, name, reference, origin, sequence, priority, state, date, date_deadline,
        company_id, product_id, product_uom, product_uom_qty, quantity, product_qty, location_id, location_dest_id,
        partner_id, picking_id, picking_type_id, procure_method, price_unit, description_picking,
        create_uid, create_date, write_uid, write_date)
    SELECT g, '[P' || lpad(p::text, 5, '0') || '] Product ' || p, 'WH/OUT/' || lpad((g / 5)::text, 6, '0'),
        'S' || lpad((g / 5)::text, 6, '0'), 10, '0', (ARRAY['done', 'done', 'done', 'assigned', 'cancel'])[1 + g %% 5],
        timestamp '2023-01-01' + random() * interval '700 days', NULL, 1 + g %% {companies}, p, 1, q, q, q,
        1 + g %% {locations}, 1 + (g + 1 + g / 7 %% {locations_1}) %% {locations},
        1 + floor(random() * {partners})::integer, 1 + (g / 5) %% {pickings},
        1 + g %% {picking_types}, 'make_to_stock', random() * 100,
        CASE WHEN g %% 6 = 0 THEN 'Handle with care ' || md5(g::text) END, {audit}
    FROM (SELECT g, 1 + floor(random() * {products})::integer AS p, round((random() * 50)::numeric, 3) AS q
          FROM generate_series(%(lo)s::integer, %(hi)s::integer) g) s""",
]
MAIL = [
    """INSERT INTO mail_message (id, subject, date, body, model, res_id, record_name, message_type, subtype_id,
        author_id, email_from, parent_id, message_id, reply_to, is_internal, create_uid, create_date, write_uid,
        write_date)
    SELECT g, CASE WHEN g %% 3 = 0 THEN 'Re: ' || m || ' ' || g END,
        timestamp '2023-01-01' + random() * interval '700 days',
        '<p>' || repeat(md5(random()::text) || ' ', 1 + (random() * 12)::integer) || '</p>', m,
        1 + floor(random() * 10000)::integer, m || ' ' || g,
        (ARRAY['comment', 'notification', 'email', 'user_notification'])[1 + g %% 4],
        1 + g %% {subtypes}, a, 'partner' || a || '@customer.example',
        CASE WHEN g > 10 AND g %% 3 = 0 THEN g - 1 - g %% 10 END,
        '<' || md5(g::text) || '.' || g || '@tenant.example>', NULL, g %% 4 = 1, {audit}
    FROM (SELECT g, (ARRAY['account.move', 'sale.order', 'res.partner', 'stock.picking', 'crm.lead'])[1 + g %% 5] AS m,
                 1 + floor(random() * {partners})::integer AS a
          FROM generate_series(%(lo)s::integer, %(hi)s::integer) g) s""",
    """INSERT INTO mail_message_res_partner_rel (mail_message_id, res_partner_id)
    SELECT g, 1 + g %% {partners} FROM generate_series(%(lo)s::integer, %(hi)s::integer) g WHERE g %% 3 = 0""",
]
POOL_BYTES = 32 * 32768  # 1 MB of sha256 output a batch, each row a random slice: no repeat within a row or nearby
ATTACHMENTS = [
    """INSERT INTO ir_attachment (id, name, res_model, res_field, res_id, company_id, type, public, access_token,
        db_datas, store_fname, file_size, checksum, mimetype, index_content, create_uid, create_date, write_uid,
        write_date)
    SELECT g, 'INV_2024_' || lpad(g::text, 7, '0') || '.pdf', m, NULL, 1 + floor(random() * 10000)::integer,
        1 + g %% {companies}, 'binary', false, CASE WHEN g %% 4 = 0 THEN md5(g::text) END, data, NULL,
        length(data), left(encode(sha256(data), 'hex'), 40), 'application/pdf',
        CASE WHEN g %% 10 = 0 THEN 'Invoice ' || g END, {audit}
    FROM (SELECT g, (ARRAY['account.move', 'sale.order', 'res.partner', 'mail.message'])[1 + g %% 4] AS m,
                 substring((SELECT string_agg(sha256(int4send(s) || int4send(%(lo)s::integer)), ''::bytea ORDER BY s)
                            FROM generate_series(1, {pool_hashes}) s)  -- an InitPlan: once a batch
                           FROM 1 + floor(random() * ({pool_bytes} - 8192))::integer
                           FOR 1024 + floor(random() * 7168)::integer) AS data
          FROM generate_series(%(lo)s::integer, %(hi)s::integer) g) a""",
]


FILL_CONSTANTS = {
    "journals": COUNTS["account_journal"],
    "partners": COUNTS["res_partner"],
    "companies": COUNTS["res_company"],
    "accounts": COUNTS["account_account"],
    "products": COUNTS["product_product"],
    "taxes": COUNTS["account_tax"],
    "locations": COUNTS["stock_location"],
    "locations_1": COUNTS["stock_location"] - 1,
    "pickings": COUNTS["stock_picking"],
    "picking_types": COUNTS["stock_picking_type"],
    "subtypes": COUNTS["mail_message_subtype"],
    "pool_bytes": POOL_BYTES,
    "pool_hashes": POOL_BYTES // 32,
}


def _fill_sql(text: str) -> sql.Composed:
    """One of the statements above, with the row counts the foreign keys draw from filled in."""
    constants = {name: sql.SQL(str(value)) for name, value in FILL_CONSTANTS.items()}
    return sql.SQL(text).format(audit=sql.SQL(AUDIT_VALUES), **constants)


@dataclass(frozen=True)
class Group:
    """Large tables filled together, batch by batch, until they hold their share of the target size."""

    name: str  # the table named in progress messages
    tables: tuple[str, ...]
    statements: list[str]
    share: float
    guess_bytes_per_row: int  # of the first, probing batch only: later batches use what the probe measured
    max_batch: int
    step: int = 1  # batch sizes are multiples of it (4 lines a move)


GROUPS = [
    Group(
        "account_move_line",
        ("account_move", "account_move_line", "account_move_line_account_tax_rel"),
        ACCOUNTING,
        0.35,
        600,
        200_000,
        4,
    ),
    Group("ir_attachment", ("ir_attachment",), ATTACHMENTS, 0.35, 5000, 20_000),
    Group("mail_message", ("mail_message", "mail_message_res_partner_rel"), MAIL, 0.18, 600, 150_000),
    Group("stock_move", ("stock_move",), STOCK, 0.12, 450, 200_000),
]
PROBE_MIN_ROWS = 40  # even at a target below the schema's own size, every large table gets some rows


def generate(
    conn: psycopg.Connection,
    size_mb: int,
    progress: Callable[[str], None] | None = None,
    seed: float = 0.42,
    custom_models: bool = True,
) -> dict:
    """Build the Odoo-shaped tenant in conn's database until it is about size_mb; return a summary.

    A provisioned tenant's database is a clone of its plan's golden template, with the Odoo tables of the modules
    its template has: those go first (everything the tenant owns is dropped), so the shape is this generator's.

    The schema alone makes the database ~30 MB (300 tables, each with its pages, indexes and sequence, and the
    catalog rows of 1,100 foreign keys), so a smaller target yields just that, with a few rows in every large table.
    Same seed, same size_mb, same server version: the same rows. Without `custom_models`, Odoo's own model tables
    only (no x_model_NNN), for tests where the count does not matter.
    """
    say = progress or (lambda _message: None)
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.commit()
    autocommit = conn.autocommit
    conn.autocommit = True  # each stage is its own explicit transaction: progress is durable, sizes are current
    # Everything the tenant owns goes; the public schema stays as it is (pg_database_owner's, as pg_dump expects).
    conn.execute("DROP OWNED BY CURRENT_USER")
    try:
        return _generate(conn, size_mb * MB, say, seed, custom_models)
    finally:
        conn.autocommit = autocommit


def _generate(
    conn: psycopg.Connection, target: int, say: Callable[[str], None], seed: float, custom_models: bool
) -> dict:
    started = time.monotonic()
    conn.execute("SELECT setseed(%s)", (seed,))

    schema = _create_schema(conn, custom_models)
    rows = _fill_small(conn, schema)
    base = _db_size(conn)
    tables = len(schema.small) + len(LARGE_INDEXES)
    say(f"schema: {tables} tables, {sum(schema.small.values())} rows in the small ones, {base / MB:.0f} MB")

    budget = max(target - base, 0)
    for group in GROUPS:
        rows += _fill_group(conn, group, budget * group.share, target, say)

    with conn.transaction():
        for table in LARGE_INDEXES:
            if "_rel" not in table:  # the ids were given explicitly; the next ORM insert takes the next one
                conn.execute(
                    sql.SQL(
                        "SELECT setval(pg_get_serial_sequence({0}, 'id'), coalesce(max(id), 0) + 1, false) FROM {1}"
                    ).format(sql.Literal(table), sql.Identifier(table))
                )
    fks = schema.fks + LARGE_FKS
    say(f"foreign keys: {len(fks)}")
    _add_foreign_keys(conn, fks)
    _create_sequences(conn)
    say("analyze")
    conn.execute("ANALYZE")

    summary = conn.execute(
        """SELECT count(*) FILTER (WHERE relkind IN ('r', 'p')), count(*) FILTER (WHERE relkind = 'i'),
                  count(*) FILTER (WHERE relkind = 'S'), pg_database_size(current_database())
           FROM pg_class WHERE relnamespace = 'public'::regnamespace"""
    ).fetchone()
    result = {
        "tables": summary[0],
        "indexes": summary[1],
        "sequences": summary[2],
        "size_bytes": summary[3],
        "rows": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
    say(f"done: {result['size_bytes'] / MB:.0f} MB of {target / MB:.0f} MB, {rows} rows, {result['seconds']} s")
    return result


def _db_size(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def _create_schema(conn: psycopg.Connection, custom_models: bool) -> Schema:
    schema = Schema()
    names = ODOO_MODELS + [f"x_model_{n:03d}" for n in range(1, SMALL_TABLES - len(ODOO_MODELS) + 1) if custom_models]
    statements: list[sql.Composable] = []
    for i, table in enumerate(names):
        statements.append(_small_table(schema, table, i))
    for table, indexes in LARGE_INDEXES.items():
        statements += [_index(table, *columns) for columns in indexes]
    statements += schema.indexes
    # Committed in chunks: one transaction over 300 CREATE TABLEs would hold ~1,500 locks, a good part of the
    # shared lock table (max_locks_per_transaction x max_connections) of a small server.
    with conn.transaction():
        for statement in LARGE_DDL.split(";"):
            if statement.strip():
                conn.execute(statement)  # the module's own DDL
    for start in range(0, len(statements), 50):
        with conn.transaction():
            for statement in statements[start : start + 50]:
                conn.execute(statement)
    return schema


def _fill_small(conn: psycopg.Connection, schema: Schema) -> int:
    with conn.transaction():
        for statement in schema.inserts.values():
            conn.execute(statement)
    return sum(schema.small.values())


def _group_size(conn: psycopg.Connection, group: Group) -> int:
    return conn.execute(
        "SELECT sum(pg_total_relation_size(t::regclass))::bigint FROM unnest(%s::text[]) t", (list(group.tables),)
    ).fetchone()[0]


def _fill_group(conn: psycopg.Connection, group: Group, budget: float, target: int, say: Callable[[str], None]) -> int:
    """Insert batches until the group's tables (heap, TOAST, indexes) hold budget bytes; return the rows inserted."""
    empty = _group_size(conn, group)
    grown = 0
    inserted = 0  # ids of the group's first table, which the others follow
    rows = 0
    batch = max(PROBE_MIN_ROWS, min(group.max_batch // 10, int(budget / group.guess_bytes_per_row)))
    while True:
        batch = max(group.step, batch // group.step * group.step)
        lo, hi = inserted + 1, inserted + batch
        with conn.transaction():
            for statement in group.statements:
                rows += conn.execute(_fill_sql(statement), {"lo": lo, "hi": hi}).rowcount
        inserted = hi
        grown = _group_size(conn, group) - empty
        say(
            f"{group.name}: {grown / MB:.0f} MB of {budget / MB:.0f} MB;"
            f" database {_db_size(conn) / MB:.0f} MB of {target / MB:.0f} MB"
        )
        per_row = grown / inserted
        missing = budget - grown
        if missing < per_row * group.step or missing < budget * 0.02:
            return rows
        batch = min(group.max_batch, math.ceil(missing / per_row))


def _add_foreign_keys(conn: psycopg.Connection, fks: list[tuple[str, str, str, str]]) -> None:
    # Named as PostgreSQL (and so Odoo) names them; validated by one scan each, as pg_restore adds them.
    for start in range(0, len(fks), 100):
        with conn.transaction():
            for table, column, target, ondelete in fks[start : start + 100]:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} (id) ON DELETE {}").format(
                        sql.Identifier(table),
                        sql.Identifier(f"{table}_{column}_fkey"),
                        sql.Identifier(column),
                        sql.Identifier(target),
                        sql.SQL(ondelete),
                    )
                )


def _create_sequences(conn: psycopg.Connection) -> None:
    """ir.sequence's standard implementation: ir_sequence_NNN, already used a random number of times."""
    with conn.transaction():
        for n in range(1, SEQUENCES + 1):
            name = sql.Identifier(f"ir_sequence_{n:03d}")
            conn.execute(sql.SQL("CREATE SEQUENCE {} INCREMENT BY 1 START WITH 1").format(name))
            conn.execute(
                sql.SQL("SELECT count(nextval({})) FROM generate_series(1, 1 + floor(random() * 500)::integer)").format(
                    sql.Literal(f"ir_sequence_{n:03d}")
                )
            )
            conn.execute(
                "UPDATE ir_sequence SET number_next = currval(%s) + 1 WHERE id = %s", (f"ir_sequence_{n:03d}", n)
            )


# -- the writer -----------------------------------------------------------------------------------------------------

WRITER_TABLE = """CREATE TABLE IF NOT EXISTS bench_writer (
    id bigserial PRIMARY KEY,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    seq bigint NOT NULL)"""
WRITER_INSERT = "INSERT INTO bench_writer (seq) VALUES (%s) RETURNING id"


@dataclass
class WriterReport:
    committed_ids: list[int]
    commits: int
    errors: int
    longest_gap_s: float  # between consecutive commits, from start() to the first, and from the last to stop()
    duration_s: float
    commit_times_s: list[float] = field(default_factory=list)  # each commit's time since start(), same order
    last_error: str | None = None


class TenantWriter:
    """Commits one row every interval through PgBouncer, reconnecting wherever locate() says the tenant is now."""

    def __init__(
        self,
        locate: Callable[[], tuple[str, int]],
        dbname: str,
        user: str,
        password: str,
        interval: float = 0.1,
    ) -> None:
        self.locate = locate
        self.dbname = dbname
        self.user = user
        self.password = password
        self.interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None
        self._ids: list[int] = []
        self._times: list[float] = []
        self._errors = 0
        self._last_error: str | None = None
        self._seq = 0
        self._started = 0.0

    def connect(self) -> psycopg.Connection:
        host, port = self.locate()
        return psycopg.connect(
            host=host,
            port=port,
            dbname=self.dbname,
            user=self.user,
            password=self.password,
            prepare_threshold=None,  # PgBouncer in transaction mode: no server-side prepared statements
            connect_timeout=2,
            autocommit=True,
            # Client-side only (no startup parameter reaches PgBouncer): notice a peer that vanished mid-query.
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=1,
            keepalives_count=3,
        )

    def prepare(self) -> None:
        """Create the table the writer fills; run before the move, so the move carries it."""
        with self.connect() as conn:
            conn.execute(WRITER_TABLE)

    @property
    def started_at(self) -> float:
        """When start() was called (time.monotonic()): the origin of WriterReport.commit_times_s."""
        return self._started

    @property
    def committed_count(self) -> int:
        with self._lock:
            return len(self._ids)

    @property
    def error_count(self) -> int:
        with self._lock:
            return self._errors

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("writer already started")
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="tenant-writer", daemon=True)
        self._thread.start()

    def stop(self) -> WriterReport:
        if self._thread is None:
            raise RuntimeError("writer not started")
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        if self._thread.is_alive():  # stuck in a query (a paused PgBouncer): cancel it, the loop then sees _stop
            conn = self._conn
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.cancel_safe(timeout=2)
            self._thread.join(timeout=10)
        ended = time.monotonic()
        with self._lock:
            times = list(self._times)
            marks = [self._started, *times, ended]
            return WriterReport(
                committed_ids=list(self._ids),
                commits=len(self._ids),
                errors=self._errors,
                longest_gap_s=max(b - a for a, b in itertools.pairwise(marks)),
                duration_s=ended - self._started,
                commit_times_s=[t - self._started for t in times],
                last_error=self._last_error,
            )

    def _run(self) -> None:
        deadline = time.monotonic()
        try:
            while not self._stop.is_set():
                self._tick()
                deadline += self.interval
                delay = deadline - time.monotonic()
                if delay < 0:  # fell behind (a reconnect, a slow commit): resume the cadence, don't burst
                    deadline, delay = time.monotonic(), 0
                if self._stop.wait(delay):
                    break
        finally:
            self._close()

    def _tick(self) -> None:
        try:
            if self._conn is None:
                self._conn = self.connect()
            self._seq += 1
            row = self._conn.execute(WRITER_INSERT, (self._seq,)).fetchone()
        except Exception as e:  # psycopg's errors, and locate()'s: the writer must outlive both
            self._close()
            with self._lock:
                self._errors += 1
                self._last_error = f"{type(e).__name__}: {e}".strip()
            return
        with self._lock:
            self._ids.append(row[0])
            self._times.append(time.monotonic())

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


# -- the command line -----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dbname", required=True, help="an empty database the user owns")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-env", default="PGPASSWORD", help="the environment variable holding the password")
    parser.add_argument("--size-mb", type=int, required=True)
    parser.add_argument("--seed", type=float, default=0.42, help="setseed() argument, -1..1")
    args = parser.parse_args()
    password = os.environ.get(args.password_env)
    if password is None:
        sys.exit(f"${args.password_env} is not set")
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"{time.monotonic() - started:7.1f}s  {message}", file=sys.stderr, flush=True)

    with psycopg.connect(
        host=args.host, port=args.port, dbname=args.dbname, user=args.user, password=password, connect_timeout=5
    ) as conn:
        summary = generate(conn, args.size_mb, progress, seed=args.seed)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
