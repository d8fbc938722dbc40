package clevis

import (
	"strconv"
	"strings"

	"github.com/diskcryptd/diskcryptd/tpm"
)

// Describe renders a JWE's pin tree for an operator, like "clevis luks list":
// "sss t=2: tpm2(pcr 7), tang(http://tang1)". Nested sss pins are bracketed.
func Describe(j *JWE) string { return describe(j) }

func describe(j *JWE) string {
	switch j.Clevis.Pin {
	case "tang":
		return "tang(" + j.Clevis.Tang.URL + ")"
	case "tpm2":
		return "tpm2(" + describeTPM2(j.Clevis.TPM2) + ")"
	case "sss":
		var b strings.Builder
		b.WriteString("sss t=")
		b.WriteString(strconv.Itoa(j.Clevis.SSS.T))
		b.WriteString(": ")
		for i, c := range j.Children {
			if i > 0 {
				b.WriteString(", ")
			}
			if c.Clevis.Pin == "sss" {
				b.WriteString("[" + describe(c) + "]")
			} else {
				b.WriteString(describe(c))
			}
		}
		return b.String()
	}
	return j.Clevis.Pin
}

func describeTPM2(h *tpm.ClevisTPM2) string {
	if h == nil || h.PCRIDs == "" {
		return "no pcrs"
	}
	s := "pcr " + strings.ReplaceAll(h.PCRIDs, ",", "+")
	if h.PCRBank != "" && h.PCRBank != "sha256" {
		s += " " + h.PCRBank
	}
	return s
}

// Uses reports whether the pin tree of j contains pin ("tang", "tpm2", "sss").
func (j *JWE) Uses(pin string) bool {
	if j.Clevis.Pin == pin {
		return true
	}
	for _, c := range j.Children {
		if c.Uses(pin) {
			return true
		}
	}
	return false
}
