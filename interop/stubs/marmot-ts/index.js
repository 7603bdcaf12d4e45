throw new Error('marmot-ts is not available in the interop suite (group chat is outside the relay path)')
