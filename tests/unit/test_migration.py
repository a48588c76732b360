"""db_migrate's pure parts: which post-data entries the logical copy restores before the data."""

from __future__ import annotations

from pathlib import Path

import yaml

from ansible_collections.saasodoo.platform.plugins.module_utils.migration import PINNED_SESSION, split_post_data

# The shape of `pg_restore -l --section=post-data` on an Odoo-shaped dump (PostgreSQL 15).
LISTING = """;
; Archive created at 2026-11-21 22:30:35 UTC
;     dbname: t_mover
;
; Selected TOC Entries:
;
4012; 2606 16640 CONSTRAINT public account_move_line account_move_line_pkey t_mover
4020; 2606 16700 CONSTRAINT public account_move_line_account_tax_rel account_move_line_account_tax_rel_pkey t_mover
4031; 2606 16720 CONSTRAINT public res_partner res_partner_ref_key t_mover
4100; 1259 16801 INDEX public account_move_line_date_idx t_mover
4101; 1259 16802 INDEX public account_move_line_partner_id_idx t_mover
4200; 2606 16900 FK CONSTRAINT public account_move_line account_move_line_partner_id_fkey t_mover
4300; 2620 17000 TRIGGER public res_partner res_partner_touch t_mover
"""


def test_keys_go_before_the_data_and_the_rest_after():
    keys, rest = split_post_data(LISTING)
    assert [line.split()[-2] for line in keys] == [
        "account_move_line_pkey",
        "account_move_line_account_tax_rel_pkey",
        "res_partner_ref_key",
    ]
    # Foreign keys ("FK CONSTRAINT") wait for the data like the indexes: the copy is not in FK order.
    assert [line.split()[3] for line in rest] == ["INDEX", "INDEX", "FK", "TRIGGER"]


def test_comments_and_blank_lines_are_not_entries():
    assert split_post_data(";\n\n; nothing selected\n") == ([], [])


def test_every_privileged_session_in_a_tenant_database_pins_the_same_settings():
    """db_migrate and tenant_database (the modules), roles/odoo_template and the backup/restore playbooks pin one
    set of startup options."""
    root = Path(__file__).resolve().parents[2]
    role = yaml.safe_load((root / "roles/odoo_template/vars/main.yml").read_text())
    playbooks = yaml.safe_load((root / "playbooks/vars/tenant.yml").read_text())
    assert role["__odoo_template_pinned_session"]["options"] == PINNED_SESSION
    assert playbooks["saasodoo_pinned_session_options"] == PINNED_SESSION
    settings = dict(option.split("=", 1) for option in PINNED_SESSION.removeprefix("-c ").split(" -c "))
    assert settings["role"] == "none" and settings["search_path"] == "pg_catalog,pg_temp"
