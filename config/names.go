package config

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// QualifiedName is a schema-qualified relation name exactly as it is in
// PostgreSQL's catalog (no case folding: Django and Rails create lower-case
// names, and a name with capitals must match its catalog spelling).
type QualifiedName struct {
	Schema string
	Name   string
}

// Identifier returns the name for SQL; pgx.Identifier quotes each part.
func (q QualifiedName) Identifier() pgx.Identifier { return pgx.Identifier{q.Schema, q.Name} }

// Sanitized is the quoted SQL form, e.g. "public"."app_chargesummary".
func (q QualifiedName) Sanitized() string { return q.Identifier().Sanitize() }

// String is the canonical display form used in metrics labels, logs and the
// status table: parts are double-quoted only when they need it.
func (q QualifiedName) String() string { return displayPart(q.Schema) + "." + displayPart(q.Name) }

// WithName returns the same schema with another relation name.
func (q QualifiedName) WithName(name string) QualifiedName {
	return QualifiedName{Schema: q.Schema, Name: name}
}

func displayPart(s string) string {
	if isPlainIdent(s) {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// isPlainIdent reports whether s needs no quotes: lower-case letters, digits,
// underscores, not starting with a digit.
func isPlainIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r == '_':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// maxIdentLen is PostgreSQL's NAMEDATALEN-1: longer names are silently
// truncated by the server, so two config names could end up the same.
const maxIdentLen = 63

// ParseQualifiedName parses "schema.name". Each part is either bare (letters,
// digits, '_' or '$', not starting with a digit or '$') or double-quoted with
// "" for a quote, which allows dots, spaces and any other character except
// NUL. A name without a schema is rejected: a search_path-dependent name would
// make the daemon's view differ from the app's.
func ParseQualifiedName(s string) (QualifiedName, error) {
	parts, err := splitIdent(s)
	if err != nil {
		return QualifiedName{}, err
	}
	if len(parts) != 2 {
		return QualifiedName{}, fmt.Errorf("expected a qualified name schema.name, got %q", s)
	}
	return QualifiedName{Schema: parts[0], Name: parts[1]}, nil
}

// ParseIdent parses a single (column) identifier with the same rules.
func ParseIdent(s string) (string, error) {
	parts, err := splitIdent(s)
	if err != nil {
		return "", err
	}
	if len(parts) != 1 {
		return "", fmt.Errorf("expected a single identifier, got %q", s)
	}
	return parts[0], nil
}

func splitIdent(s string) ([]string, error) {
	// PostgreSQL rejects invalid UTF-8 in a UTF8 database, and String() ends
	// up in Prometheus label values, which must be valid UTF-8.
	if !utf8.ValidString(s) {
		return nil, fmt.Errorf("name %q is not valid UTF-8", s)
	}
	var parts []string
	i := 0
	for {
		if i >= len(s) {
			return nil, fmt.Errorf("empty name part in %q", s)
		}
		var part string
		if s[i] == '"' {
			var b strings.Builder
			j := i + 1
			closed := false
			for j < len(s) {
				if s[j] == '"' {
					if j+1 < len(s) && s[j+1] == '"' {
						b.WriteByte('"')
						j += 2
						continue
					}
					closed = true
					j++
					break
				}
				b.WriteByte(s[j])
				j++
			}
			if !closed {
				return nil, fmt.Errorf("unterminated quoted identifier in %q", s)
			}
			part = b.String()
			if part == "" {
				return nil, fmt.Errorf("empty quoted identifier in %q", s)
			}
			if strings.ContainsRune(part, 0) {
				return nil, fmt.Errorf("identifier contains a NUL byte in %q", s)
			}
			i = j
		} else {
			j := i
			for j < len(s) && s[j] != '.' {
				j++
			}
			part = s[i:j]
			if err := checkBare(part); err != nil {
				return nil, fmt.Errorf("%w in %q", err, s)
			}
			i = j
		}
		if len(part) > maxIdentLen {
			return nil, fmt.Errorf("identifier %q is longer than %d bytes", part, maxIdentLen)
		}
		parts = append(parts, part)
		if i == len(s) {
			return parts, nil
		}
		if s[i] != '.' {
			r, _ := utf8.DecodeRuneInString(s[i:])
			return nil, fmt.Errorf("unexpected %q after quoted identifier in %q", r, s)
		}
		i++
	}
}

func checkBare(p string) error {
	if p == "" {
		return fmt.Errorf("empty name part")
	}
	for i, r := range p {
		ok := r == '_' || unicode.IsLetter(r) || (i > 0 && (unicode.IsDigit(r) || r == '$'))
		if !ok {
			return fmt.Errorf("character %q needs the name part to be double-quoted", r)
		}
	}
	return nil
}
