package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// groupAnnotation marks a command group: a command that only holds
// subcommands ('klab pod', 'klab lab', ...), as opposed to a verb that also
// has subcommands of its own ('klab trace').
const groupAnnotation = "klab.group"

// rejectUnknownSubcommands makes every command group under root reject an
// unknown subcommand the way cobra's root does ('unknown command "x" for
// "klab pod"', with its "Did you mean this?" suggestions), instead of
// printing its help and exiting 0; a group called with no arguments still
// prints its help. cobra only checks subcommands of the root: a group that
// is not runnable never looks at its arguments, so each group gets a RunE
// that prints the help and an Args that names the unknown subcommand.
func rejectUnknownSubcommands(root *cobra.Command) {
	for _, c := range root.Commands() {
		markGroups(c)
	}
}

func markGroups(c *cobra.Command) {
	for _, sub := range c.Commands() {
		markGroups(sub)
	}
	if !c.HasSubCommands() || c.Runnable() {
		return
	}
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Annotations[groupAnnotation] = "true"
	c.Args = unknownSubcommand
	c.RunE = func(cmd *cobra.Command, args []string) error { return cmd.Help() }
	// The group's usage stays "klab pod [command]", not also "klab pod
	// [flags]" as for a runnable command (its subcommands inherit the
	// template and are unchanged by it).
	c.SetUsageTemplate(strings.Replace(c.UsageTemplate(), "{{if .Runnable}}", "{{if and .Runnable (not .HasAvailableSubCommands)}}", 1))
}

// isGroup reports whether c is a command group (see rejectUnknownSubcommands).
func isGroup(c *cobra.Command) bool { return c.Annotations[groupAnnotation] != "" }

// unknownSubcommand is a group's argument check: any argument left after
// cobra found no subcommand is an unknown one. The wording is cobra's own
// for the root (legacyArgs and findSuggestions, which are unexported).
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	return fmt.Errorf("unknown command %q for %q%s", args[0], cmd.CommandPath(), suggestions(cmd, args[0]))
}

func suggestions(cmd *cobra.Command, arg string) string {
	if cmd.DisableSuggestions {
		return ""
	}
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	var sb strings.Builder
	if s := cmd.SuggestionsFor(arg); len(s) > 0 {
		sb.WriteString("\n\nDid you mean this?\n")
		for _, name := range s {
			fmt.Fprintf(&sb, "\t%v\n", name)
		}
	}
	return sb.String()
}
