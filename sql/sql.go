// Package sql holds refresherd's own database objects as embedded SQL.
package sql

import _ "embed"

// Schema creates the refresherd schema, status tables and functions.
//
//go:embed schema.sql
var Schema string

// Names of refresherd's objects that the Go code refers to.
const (
	SchemaName    = "refresherd"
	NotifyChannel = "refresherd_changes"
	TriggerName   = "refresherd_notify"
	// NotifyFunction is the notify trigger's function: it rings the
	// doorbell named in its argument (see notify_ring() in schema.sql).
	NotifyFunction = "notify_ring"
	// LegacyNotifyFunction is the notify trigger's function before the
	// per-table doorbells; triggers calling it are replaced.
	LegacyNotifyFunction = "notify_change"
	// DoorbellOp is the op of the notify triggers' notification: poll now.
	DoorbellOp = "doorbell"
)
