"""How a component hands its options on to its children, as Pulumi's own components do: the
caller gives the component `provider` (or `providers`) and `depends_on` through `opts`.

A child parented to the component takes the component's providers for its own package (Pulumi
keeps a component's `provider` in its providers map), but not its `depends_on`: a component
passes that on itself, to the children that must wait."""

from __future__ import annotations

import pulumi


def children(component: pulumi.Resource, opts: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    """Options for the children of `component` that wait for what its `opts.depends_on` names."""
    return pulumi.ResourceOptions(parent=component, depends_on=opts.depends_on if opts else None)


def after(options: pulumi.ResourceOptions, *resources: pulumi.Resource, **more) -> pulumi.ResourceOptions:
    """`options`, also waiting for `resources`, with any other option in `more`."""
    return pulumi.ResourceOptions.merge(options, pulumi.ResourceOptions(depends_on=list(resources), **more))
